"""TTAPipeline: prompt -> CLAP text embedding -> guided latent diffusion -> mel-VAE decoder -> HiFi-GAN -> wav.

A pipeline folder:

    pipeline.json    {"class", "format_version": 1, "components": {name: sub-folder}, "defaults": {...}}
    unet/            diffusers' own UNet2DConditionModel files (config.json + diffusion_pytorch_model.safetensors)
    scheduler/       diffusers' scheduler_config.json: the training noise schedule (+ prediction type)
    vae/             tta component (vae.model.MelVAE; carries scale_factor)
    vocoder/         tta component: vocoder.model.HiFiGAN, vocoder.vocos.Vocos (inverse-STFT vocoder),
                     vocoder.griffinlim.GriffinLim (no weights), or vocoder.postnet.PostnetGriffinLim
                     (Griffin-Lim behind a learned magnitude post-net)
    text_encoder/    CLAP: a tta component (tta.clap.model.TTAClap) or a transformers CLAP folder + tokenizer
    retrieval/       optional: the context encoder of a retrieval-augmented (Re-AudioLDM) model; its
                     datastore is passed per call (`datastore=`, `tta generate --datastore DIR`)
    README.md ...    optional notes on the weights (model card, ATTRIBUTION.md, licences/), which save_pretrained
                     and `tta export pipeline` copy with them (tta.ldm.folder.find_notes)

The pipeline refuses components that do not fit together (VAE and vocoder mel configs, latent channels,
CLAP width vs the UNet's class-embedding width), naming the component and field.

Edits follow AudioLDM §4: `audio_to_audio` (SDEdit: the input's latents noised to `strength` and
denoised towards the prompt), `inpaint` (a time range regenerated, the rest kept), `super_resolve`
(mel bands above a cut-off regenerated from low-band audio).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tta.audio import AudioError, check_same_mel, float_audio, log_mel
from tta.checkpoint import CheckpointError, keep_global_rng, load_component, read_json
from tta.config import ConfigError, from_known_fields, is_real
from tta.device import without_caller_autocast
from tta.ldm.folder import FORMAT_VERSION, PIPELINE_FILE, REQUIRED, SCHEDULER_FILE, find_notes, write_pipeline
from tta.ldm.folder import vocoder_class as _vocoder_class
from tta.ldm.model import LDMUNet
from tta.ldm.sampling import (
    GUIDANCE_RULES,
    PRECISIONS,
    DiffusionConfig,
    check_guidance_rule,
    check_part_way,
    check_precision,
    check_sampler,
    check_strength_leaves_a_step,
    denoise,
    draw_noise,
    make_scheduler,
)

log = logging.getLogger(__name__)

MAX_SECONDS = 120.0        # longest clip one call generates (memory of the attention grows with length)
STEP_NOISE_OFFSET = 1 << 40   # seed of an item's per-step sampler noise = its seed + this


class PipelineError(ValueError):
    """A pipeline folder or call that cannot work; the message names the component / argument."""


CONTEXT_GUIDANCE = ("shared", "guided")
EDIT_OUTSIDE = ("original", "decoded")   # what an inpainted or super-resolved clip holds outside what it made
MAX_SEED = 2**62           # prompt i, candidate j draw with seed + i + 1000003 * j: a 64-bit generator seed
INPAINT_FADE = 0.02        # seconds of raised-cosine crossfade centred on each edge of a spliced gap
INPAINT_RANK_CONTEXT = 0.5  # seconds on each side of an inpainted gap that candidate ranking hears with it
INPAINT_CONTEXT = 2.5       # seconds at least on each side of a gap that inpainting a longer clip samples with it
SR_CROSSOVER = 0.1          # super-resolution's crossover: input below (1 - this) x cutoff, generated above cutoff


# what an edit (audio_to_audio, inpaint, super_resolve) passes on to generation: __call__'s settings but its
# length. Written out rather than read from __call__'s signature, so that a keyword added there is a decision
# for the edits too: test_pipeline.py compares the two and fails until the new one is listed here or left out
# there (as seconds= and window= are)
EDIT_SETTINGS = ("steps", "guidance", "negative", "candidates", "seed", "sampler", "eta", "batch_size",
                 "guidance_rule", "precision", "progress", "return_candidates", "datastore", "neighbours",
                 "context_guidance", "prompt_ids")


def check_edit_settings(method: str, settings: dict) -> None:
    """A TypeError naming the edit `method` and the keyword it does not take, before any compute: its length
    (seconds=, window=) is its input's, and the arguments the edit itself computes are not settings."""
    method = f"TTAPipeline.{method}()"
    for name in settings:
        if name == "seconds":
            raise TypeError(f"{method} takes no seconds=: an edit's length is its input's (cut or pad the audio)")
        if name == "window":
            raise TypeError(f"{method} takes no window=: an edit's length is its input's (an input shorter than the "
                            "model's defaults.window is sampled at that window and cut back)")
        if name == "strength":
            raise TypeError(f"{method} takes no strength=: it regenerates what it edits from noise (strength= is "
                            "audio_to_audio's)")
        if name not in EDIT_SETTINGS:
            raise TypeError(f"{method} got an unexpected keyword argument {name!r}; besides its own, an edit takes "
                            f"{', '.join(EDIT_SETTINGS)}")


def check_context_guidance(name: str) -> str:
    if name not in CONTEXT_GUIDANCE:
        raise ValueError(f"context_guidance={name!r} must be one of {', '.join(CONTEXT_GUIDANCE)}")
    return name


@dataclass(frozen=True)
class PipelineDefaults:
    """What `tta generate` uses when a flag is not given (AudioLDM: DDIM 200, guidance 2.5)."""

    sampler: str = "ddim"
    steps: int = 200
    guidance: float = 2.5
    seconds: float = 10.0
    candidates: int = 1
    # Shortest length sampled for text-to-audio: a shorter request is generated at `window` seconds and cut
    # from its start to the asked length (a UNet trained on fixed-length crops sounds best at that length).
    # 0 = sample exactly the asked length.
    window: float = 0.0
    # how guidance combines the conditional and unconditional predictions: "cfg" or "apg" (tta.ldm.sampling)
    guidance_rule: str = "cfg"
    # the UNet's arithmetic while sampling: "float32", "bfloat16" (autocast) or "auto" (bfloat16 where the device
    # has it in hardware; tta.ldm.sampling.native_bfloat16)
    precision: str = "float32"
    # retrieval models: what the unconditional guidance branch sees, "shared" (the prompt's neighbours, like the
    # conditional branch: guidance pushes along the prompt only) or "guided" (the null context: guidance pushes
    # along the prompt and the neighbours together, as IP-Adapter guides its image prompt)
    context_guidance: str = "shared"
    # DDIM's eta (0 = deterministic DDIM; 1 = as stochastic as DDPM; AudioLDM's own sampling uses 1)
    eta: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"defaults.{name}={value!r} must be an integer >= 1")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) \
                or not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"defaults.guidance={self.guidance!r} must be a finite number >= 0")
        if not valid_window(self.seconds) or self.seconds == 0:
            raise ValueError(f"defaults.seconds={self.seconds!r} must be in (0, {MAX_SECONDS:g}] seconds")
        if not valid_window(self.window):
            raise ValueError(f"defaults.window={self.window} must be in [0, {MAX_SECONDS:g}] seconds")
        if self.guidance_rule not in GUIDANCE_RULES:
            raise ValueError(f"defaults.guidance_rule={self.guidance_rule!r} must be one of {', '.join(GUIDANCE_RULES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"defaults.precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0 <= self.eta <= 1:
            raise ValueError(f"defaults.eta={self.eta!r} must be a number in [0, 1]")
        if self.context_guidance not in CONTEXT_GUIDANCE:
            raise ValueError(f"defaults.context_guidance={self.context_guidance!r} must be one of "
                             f"{', '.join(CONTEXT_GUIDANCE)}")


def is_integer(x) -> bool:
    """An integer, numpy scalars included, bools not."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def valid_window(window) -> bool:
    """A sampling window is a finite number of seconds in [0, MAX_SECONDS]."""
    return is_real(window) and 0 <= window <= MAX_SECONDS


@dataclass
class Generation:
    """Output of a pipeline call: one wav (T,) float32 per prompt, the CLAP score of each kept wav, and
    the scores of all candidates (prompt-major) and the seeds that drew them; with return_candidates, every
    candidate's wav as well (prompt-major, the kept one among them)."""

    wavs: list[np.ndarray]
    sample_rate: int
    scores: list[float]
    candidate_scores: list[list[float]] = field(default_factory=list)
    seeds: list[list[int]] = field(default_factory=list)
    neighbours: list[list[dict]] | None = None   # per prompt, the retrieved entries (rank, id, caption, score)
    candidate_wavs: list[list[np.ndarray]] | None = None   # per prompt, every candidate (return_candidates)
    input_level: float = 1.0   # an edit's: the factor that took the model's output back to the input's level
    input_offset: float = 0.0  # an edit's: the DC offset added back with it (the input's, where the output holds it)
    sampled: tuple[float, float] | None = None   # an inpainting's: the seconds of its input the UNet ran on
    rank_span: tuple[int, int] | None = None   # an inpainting's: the samples its candidates were ranked on


@dataclass
class _VocoderState:
    """A parametrized (weight-normed) vocoder as TTAPipeline.__getstate__ sends it: enough to build it again."""

    cls: type
    config: object
    weights: dict
    device: torch.device


def open_text_encoder(folder: str | os.PathLike, device="cpu"):
    """The CLAP embedder (embed_text / embed_audio) stored in text_encoder/: a tta CLAP component, or a
    transformers CLAP folder holding its own tokenizer files (tta.clap.load_clap reads both)."""
    from tta.clap import backend_of, load_clap

    folder = Path(folder)
    tokenizer = None
    if backend_of(folder) == "laion-hf" and any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json")):
        tokenizer = folder
    return load_clap(folder, tokenizer=tokenizer, device=device)


# the keywords TTAPipeline.sample passes on to denoise: all of denoise's but those sample sets itself
SAMPLE_PASSES_ON = frozenset(inspect.signature(denoise).parameters) - {
    "unet", "scheduler", "noise", "cond", "uncond", "steps", "guidance", "eta"}


class TTAPipeline:
    def __init__(self, unet: LDMUNet, vae, vocoder, clap, scheduler_config: dict,
                 defaults: PipelineDefaults = PipelineDefaults(), retrieval=None):
        self.unet, self.vae, self.vocoder, self.clap = unet.eval(), vae.eval(), vocoder.eval(), clap
        self.retrieval = None if retrieval is None else retrieval.eval()   # RetrievalContext (Re-AudioLDM)
        self.scheduler_config = dict(scheduler_config)
        self.defaults = defaults
        # notes on the weights that save_pretrained copies with them: from_pretrained sets those of its folder
        self.notes: list[Path] = []
        self._check_fit()

    def __getstate__(self) -> dict:
        """What pickle and copy.deepcopy keep: torch refuses to pickle a weight-normed vocoder (HiFi-GAN as trained,
        before remove_weight_norm: its convolutions are parametrized), and a deep copy of one shares its generated
        classes with the original, so such a vocoder goes as its class, config, weights and device, and is built
        again (__setstate__)."""
        from torch.nn.utils import parametrize

        state = dict(self.__dict__)
        if any(parametrize.is_parametrized(m) for m in self.vocoder.modules()):
            v = self.vocoder
            state["vocoder"] = _VocoderState(type(v), v.config, v.state_dict(), next(v.parameters()).device)
        return state

    def __setstate__(self, state: dict) -> None:
        """A pickled or copied pipeline; a vocoder sent as its weights is built again, leaving the global random
        generators as they were (building it draws initial weights that the stored ones replace)."""
        v = state["vocoder"]
        if isinstance(v, _VocoderState):
            with keep_global_rng():
                vocoder = v.cls(v.config)
            vocoder.load_state_dict(v.weights)
            state["vocoder"] = vocoder.to(v.device).eval()
        state.setdefault("notes", [])   # pickled before pipelines kept their notes
        self.__dict__.update(state)

    # -- assembly --------------------------------------------------------------------------------

    def _check_fit(self) -> None:
        try:   # the noise schedule's own fields, as from_pretrained checks a scheduler_config.json's
            from_known_fields(DiffusionConfig, self.scheduler_config, where="scheduler")
        except ConfigError as e:
            raise PipelineError(f"scheduler config: {e}") from None
        check_same_mel(self.vae.config.mel, self.vocoder.config.mel, "vae/", "vocoder/")
        u = self.unet.config
        if u.latent_channels != self.vae.config.latent_channels:
            raise PipelineError(f"unet/ latent_channels={u.latent_channels} differs from vae/ "
                                f"latent_channels={self.vae.config.latent_channels}")
        if u.class_embed_dim != self.clap.embed_dim:
            raise PipelineError(f"unet/ class embedding width {u.class_embed_dim} differs from text_encoder/ "
                                f"embedding width {self.clap.embed_dim}")
        refusal = getattr(self.clap, "audio_refusal", None)   # a CLAP loaded text_only (tta.clap.load_clap)
        if refusal:   # every output is ranked and scored by its audio embedding (_rank), after all its steps
            raise PipelineError(f"text_encoder/ cannot embed audio, and the pipeline scores every output by its "
                                f"audio embedding: {refusal}")
        freq = self.vae.config.mel.n_mels // self.vae.downsample_factor
        if freq % self.unet.downsample_factor:
            raise PipelineError(f"vae/ latent frequency size {freq} is not a multiple of the unet/ "
                                f"downsampling factor {self.unet.downsample_factor}")
        check_sampler(self.defaults.sampler)
        r = self.retrieval
        if r is not None and r.config.attention == "decoupled":   # a plain UNet plus the encoder's branches
            if u.context_dim is not None or r.config.embed_dim != self.clap.embed_dim:
                raise PipelineError(f"retrieval/ (decoupled attention, {r.config.embed_dim}-d embeddings) needs a "
                                    f"unet/ without cross-attention (context_dim {u.context_dim}) and a "
                                    f"text_encoder/ of that width ({self.clap.embed_dim})")
            from tta.ldm.retrieval_context import attach_decoupled

            try:
                attach_decoupled(self.unet, r.config)
            except ValueError as e:
                raise PipelineError(str(e)) from None
            return
        if (u.context_dim is None) != (r is None):
            raise PipelineError("unet/ context_dim and retrieval/ go together: a retrieval model needs both, a "
                                f"plain one neither (unet context_dim={u.context_dim}, retrieval/ "
                                f"{'present' if r is not None else 'absent'})")
        if r is not None and (r.config.context_dim != u.context_dim or r.config.embed_dim != self.clap.embed_dim):
            raise PipelineError(f"retrieval/ maps {r.config.embed_dim}-d embeddings to {r.config.context_dim}-d tokens; "
                                f"unet/ context_dim is {u.context_dim} and text_encoder/ width {self.clap.embed_dim}")

    @property
    def mel(self):
        return self.vae.config.mel

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device, dtype=None) -> TTAPipeline:
        """Move every part, the CLAP included (it ranks candidates and embeds prompts; its embeddings come back on
        the CPU either way). `device` is a torch.device or its name ("cpu", "cuda:1"); a dtype, an unknown name or
        a device this machine lacks is a PipelineError before any part moves (the UNet's arithmetic is chosen per
        call: `precision=`). `dtype` (diffusers' `pipe.to("cuda", torch.float16)`) may only be torch.float32, the
        dtype the parts keep; another is a PipelineError naming it, before any part moves."""
        if dtype is not None and dtype != torch.float32:
            raise PipelineError(f"dtype={dtype}: the pipeline's weights stay float32; the UNet's arithmetic is chosen "
                                f"per call with precision= ({', '.join(PRECISIONS)})")
        device = check_device(device)
        self.unet.to(device)
        self.vae.to(device)
        self.vocoder.to(device)
        if hasattr(self.clap, "to"):
            self.clap.to(device)
        if self.retrieval is not None:
            self.retrieval.to(device)
        return self

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device="cpu") -> TTAPipeline:
        """Load a pipeline folder onto `device` (checked first, as `to` checks it). The global random generators
        are left as they were: building the parts draws initial weights that the stored ones replace, and a
        script's own random numbers must not depend on whether it loaded a model. The parts are built on the CPU
        (and moved after), so CUDA's generators are neither read nor drawn from: reading them would start CUDA
        on every GPU of the machine."""
        check_device(device)
        with keep_global_rng():
            return cls._load_folder(Path(folder), device)

    @classmethod
    def _load_folder(cls, folder: Path, device) -> TTAPipeline:
        from tta.config import from_dict

        spec = read_pipeline_json(folder)
        parts = spec["components"]
        for name in REQUIRED:
            sub = folder / parts[name]
            if not sub.is_dir():
                raise PipelineError(f"{folder}: component {name!r} is missing (no {parts[name]}/ folder)")
        try:
            defaults = from_dict(PipelineDefaults, spec.get("defaults", {}), where="defaults")
        except ConfigError as e:
            raise PipelineError(f"{folder / PIPELINE_FILE}: {e}") from None
        sched_path = folder / parts["scheduler"] / SCHEDULER_FILE
        if not sched_path.is_file():
            raise PipelineError(f"{folder}: component 'scheduler' has no {SCHEDULER_FILE}")
        try:
            scheduler_config = json.loads(sched_path.read_text(encoding="utf-8"))
            if not isinstance(scheduler_config, dict):
                raise ValueError(f"expected a JSON object, got {type(scheduler_config).__name__}")
            # the noise schedule's own fields, checked by type and range like any config (diffusers would
            # otherwise fail deep inside set_timesteps with an error that names no file)
            from_known_fields(DiffusionConfig, scheduler_config, where="scheduler")
        except (UnicodeDecodeError, json.JSONDecodeError, ConfigError, ValueError) as e:
            raise PipelineError(f"{sched_path}: {e}") from None
        unet = LDMUNet.load_diffusers(folder / parts["unet"])
        from vae.model import MelVAE
        vae = _load(folder, parts, "vae", MelVAE)
        vocoder = _load(folder, parts, "vocoder", vocoder_class(folder / parts["vocoder"]))
        try:
            clap = open_text_encoder(folder / parts["text_encoder"])
        except (CheckpointError, ValueError) as e:
            raise PipelineError(f"{folder}: component 'text_encoder' cannot be loaded: {e}") from None
        retrieval = None
        if "retrieval" in parts:
            from tta.ldm.retrieval_context import RetrievalContext

            retrieval = _load(folder, parts, "retrieval", RetrievalContext)
        try:
            pipe = cls(unet, vae, vocoder, clap, scheduler_config, defaults, retrieval).to(device)
        except ValueError as e:
            raise PipelineError(f"{folder}: components do not fit together: {e}") from None
        pipe.notes = find_notes(folder, parts.values())
        return pipe

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the pipeline folder atomically (layout: tta.ldm.folder), with the notes on its weights (`notes`):
        a pipeline loaded from a folder carries that folder's model card, attribution and licences (which the
        training data's licences require to go with the weights), read from it now, as `tta export pipeline`
        copies them; one built in memory has none, and its folder says nothing of them (tta does not know where
        weights it was handed come from). Notes describe the loaded model: after replacing a part, edit them or
        set `notes` (a list of files and folders) to what describes this one. A note that is gone is a
        PipelineError before anything is written."""
        from tta.config import to_dict

        for note in self.notes:
            if not os.path.exists(note):
                raise PipelineError(f"{note}: a note on this pipeline's weights (model card, attribution, licences) "
                                    "to save with them is gone; restore it, or drop it from the pipeline's notes")
        return write_pipeline(folder, unet=self.unet, scheduler=make_scheduler(self.defaults.sampler,
                              self.scheduler_config), vae=self.vae, vocoder=self.vocoder,
                              text_encoder=self.clap, defaults=to_dict(self.defaults), retrieval=self.retrieval,
                              notes=self.notes)

    # -- shapes ----------------------------------------------------------------------------------

    def latent_shape(self, num_samples: int) -> tuple[int, int, int]:
        """(C, T', F') of the latents generated for `num_samples` of audio: T' padded up to the UNet multiple."""
        frames = math.ceil(num_samples / self.mel.hop_length)
        f, m = self.vae.downsample_factor, self.unet.downsample_factor
        t = math.ceil(math.ceil(frames / f) / m) * m
        return (self.unet.config.latent_channels, t, self.mel.n_mels // f)

    def check_seconds(self, seconds: float, *, what: str | None = None) -> int:
        """Samples for `seconds`, or a PipelineError when the length is not usable. `what` names the length in
        the message (default: the argument, "seconds=10.0"); an edit, given no seconds=, names its input."""
        if not is_real(seconds) or seconds <= 0:
            raise PipelineError(f"{what or f'seconds={seconds!r}'} must be a positive number")
        what = what or f"seconds={seconds}"
        if seconds > MAX_SECONDS:
            raise PipelineError(f"{what} exceeds the maximum of {MAX_SECONDS:g} s per clip")
        n = int(round(seconds * self.sample_rate))
        if n < self.mel.hop_length:
            raise PipelineError(f"{what} is shorter than one mel frame ({self.mel.hop_length / self.sample_rate:g} s)")
        return n

    # -- encode / decode -------------------------------------------------------------------------

    @torch.no_grad()
    @without_caller_autocast
    def encode_audio(self, wav: np.ndarray, num_samples: int) -> torch.Tensor:
        """wav (T,) at sample_rate -> scaled latents (1, C, T', F') of the padded generation length."""
        _, t, _ = self.latent_shape(num_samples)
        x = np.zeros(max(num_samples, self.mel.pad + 1), dtype=np.float32)   # room for the reflect pad
        x[: min(len(wav), num_samples)] = wav[:num_samples]
        mel = log_mel(torch.from_numpy(x)[None], self.mel).float()          # (1, n_mels, frames)
        frames = t * self.vae.downsample_factor
        floor = math.log(self.mel.log_floor)                                # silence in log-mel
        mel = torch.nn.functional.pad(mel, (0, frames - mel.shape[-1]), value=floor)
        return self.vae.mel_to_latents(mel.to(self.device)).float()

    @torch.no_grad()
    @without_caller_autocast
    def decode(self, latents: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Scaled latents (B, C, T', F') -> wav (B, num_samples) float32 on CPU."""
        mel = self.vae.latents_to_mel(latents)
        wav = self.vocoder(mel.float())
        return wav[:, :num_samples].float().cpu()

    @torch.no_grad()
    @without_caller_autocast
    def resynthesise(self, wav: np.ndarray, *, through: str = "vae") -> np.ndarray:
        """wav (T,) back out of the pipeline's own parts, as long as it went in: `through="vocoder"` makes
        its mel and vocodes it; `through="vae"` also encodes that mel to latents and decodes them first. What
        comes out is the best any UNet on these parts could give for that clip (a ceiling)."""
        if through not in ("vae", "vocoder"):
            raise PipelineError(f"through={through!r}: expected 'vae' or 'vocoder'")
        wav = mono_audio(wav, "resynthesise")
        n = len(wav)
        if through == "vae":
            return self.decode(self.encode_audio(wav, n), n)[0].numpy()
        x = np.zeros(max(n, self.mel.pad + 1), np.float32)   # a clip shorter than the reflect pad: zero-padded
        x[:n] = wav
        mel = log_mel(torch.from_numpy(x)[None], self.mel).float()
        out = self.vocoder(mel.to(self.device))[0, :n].float().cpu().numpy()
        return np.pad(out, (0, n - len(out)))   # the vocoder makes whole hops: as long as it went in, as "vae" is

    # -- generation ------------------------------------------------------------------------------

    @without_caller_autocast
    def __call__(self, prompts: list[str], *, seconds: float | None = None, steps: int | None = None,
                 guidance: float | None = None, negative: str = "", candidates: int | None = None,
                 seed: int = 0, sampler: str | None = None, eta: float | None = None, batch_size: int = 1,
                 guidance_rule: str | None = None, precision: str | None = None,
                 progress: bool = False, datastore=None, neighbours: int | None = None,
                 window: float | None = None, return_candidates: bool = False,
                 context_guidance: str | None = None, prompt_ids: list[str] | None = None) -> Generation:
        """Generate one wav per prompt (the best of `candidates` by CLAP score).

        Prompt i, candidate j starts from noise seeded `seed + i + 1_000_003 * j`, drawn on the CPU, so
        outputs do not depend on batch_size or device up to float rounding of batched sums: in float32 a few
        percent, in bfloat16 (precision "auto" on a CPU that computes it, as the embedded model asks) the
        sampler can carry the rounding to an audibly different clip. batch_size counts
        prompts: each brings its candidates into the same forward pass (as diffusers' num_images_per_prompt
        does), so drawing candidates costs less than running them one by one. guidance <= 1 disables
        classifier-free guidance.
        datastore (a folder or a tta.retrieval.Datastore) + neighbours k (default: the training k): a
        retrieval model is conditioned on each prompt's k nearest entries; without a datastore it runs
        on its null context. window (default: the model's `defaults.window`): clips shorter than this are
        sampled at `window` seconds and cut to `seconds` from the start (before CLAP ranking).
        return_candidates: also return every candidate's wav (`Generation.candidate_wavs`), e.g. to score
        one draw with another CLAP. precision (default: the model's `defaults.precision`): the UNet's arithmetic,
        "float32", "bfloat16" or "auto" (tta.ldm.sampling.PRECISIONS); it is what runs under a caller's
        torch.autocast too: every method of the pipeline switches that off (tta.device.caller_autocast_off), and
        bfloat16 turns autocast on for the UNet's forward passes only, as without one. context_guidance (default: the model's
        `defaults.context_guidance`): with a datastore, "guided" gives the unconditional branch the null context,
        so guidance amplifies the neighbours' effect with the prompt's; "shared" gives both branches the neighbours.
        prompt_ids: names for the prompts in messages (default: `prompts[i]`).
        """
        n = self.check_seconds(self.defaults.seconds if seconds is None else seconds)
        window = self.defaults.window if window is None else window
        if not valid_window(window):
            raise PipelineError(f"window={window!r} must be in [0, {MAX_SECONDS:g}] seconds")
        sampled = max(n, round(window * self.sample_rate))
        return self._run(prompts, sampled, steps=steps, guidance=guidance, negative=negative, candidates=candidates,
                         seed=seed, sampler=sampler, eta=eta, batch_size=batch_size, guidance_rule=guidance_rule,
                         precision=precision, progress=progress, return_candidates=return_candidates,
                         prompt_ids=prompt_ids,
                         datastore=datastore, neighbours=neighbours, cut=n, context_guidance=context_guidance)

    def _edit_length(self, wav: np.ndarray) -> tuple[int, int]:
        """(the edit's length in samples, the length it is sampled at): an input shorter than the model's window
        is sampled padded with silence to the window and cut back, as a shorter text-to-audio clip is (a UNet
        trained on 10 s clips renders a 0.3 s one poorly)."""
        seconds = len(wav) / self.sample_rate
        n = self.check_seconds(seconds, what=f"edit input: {seconds:g} s of audio")
        return n, max(n, round(self.defaults.window * self.sample_rate))

    @without_caller_autocast
    def audio_to_audio(self, wav: np.ndarray, prompts: list[str], *, strength: float = 0.5, **kwargs) -> Generation:
        """Style transfer (SDEdit): wav (T,) at sample_rate noised to `strength` in (0, 1], denoised to the prompt.

        Every edit (this, inpaint, super_resolve) takes float audio at any level: the model hears it as it heard
        its training audio (DC removed, peak 0.5) and the outputs are scaled back by the same factor
        (`Generation.input_level`), so they sit at the input's scale; what the model regenerates may still come
        out quieter (audio-to-audio of speech and sound clips with the embedded model: 4-11 dB under the input at
        strength 0.3 and 0.6). An input shorter than the model's `window` is sampled
        padded with silence to the window, and the output cut back to the input's length. The other settings are
        __call__'s (EDIT_SETTINGS), less its length: an edit's is its input's."""
        check_edit_settings("audio_to_audio", kwargs)
        wav, level, _ = edit_input(wav)
        n, sampled = self._edit_length(wav)
        if not is_real(strength) or not 0 < strength <= 1:
            raise PipelineError(f"strength={strength!r} must be a number in (0, 1]")
        try:   # before the input is encoded and the prompts embedded
            check_part_way(check_sampler(self.defaults.sampler if kwargs.get("sampler") is None else kwargs["sampler"]),
                           strength)
        except ValueError as e:
            raise PipelineError(str(e)) from None
        steps = self.defaults.steps if kwargs.get("steps") is None else kwargs["steps"]
        if is_integer(steps) and steps >= 1:
            try:
                check_strength_leaves_a_step(int(steps), strength, where=f"strength={strength} with steps={steps}")
            except ValueError as e:
                raise PipelineError(str(e)) from None
        return at_level(self._run(prompts, sampled, init_wav=wav, strength=strength, cut=n, **kwargs), level)

    @without_caller_autocast
    def inpaint(self, wav: np.ndarray, prompts: list[str], *, start: float, end: float, outside: str = "original",
                **kwargs) -> Generation:
        """Regenerate seconds [start, end) of wav (T,) from the prompt; the rest of the clip is kept.

        The latents outside the gap are held at the input's throughout sampling, so the generated gap fits its
        surroundings. `outside` "original" (the default) then splices the generated gap into the input audio
        itself, with a 20 ms raised-cosine crossfade centred on each edge, so the kept parts are the input's
        samples (its DC offset too); "decoded" returns the whole decoded clip, the kept parts too as the VAE and
        vocoder render them (AudioLDM's inpainting output). Candidates are ranked by CLAP on the gap with up to
        INPAINT_RANK_CONTEXT seconds on each side, not on the whole clip, which is mostly the input.

        A clip longer than the gap with INPAINT_CONTEXT seconds on each side, and longer than the model's window,
        is sampled only there (a window of at least the model's window, centred on the gap where the clip allows):
        the UNet runs on that window's latents; with "decoded" the gap's latents are put into the whole clip's and
        decoded with them. `Generation.sampled` says which seconds of the input were sampled.
        """
        check_edit_settings("inpaint", kwargs)
        if outside not in EDIT_OUTSIDE:
            raise PipelineError(f"outside={outside!r}: expected one of {', '.join(EDIT_OUTSIDE)}")
        if not is_real(start) or not is_real(end):
            raise PipelineError(f"inpaint range start={start!r}, end={end!r}: expected numbers of seconds")
        raw = mono_audio(wav, "edit input")
        wav, level, offset = edit_input(raw)
        n, sampled = self._edit_length(wav)
        if 0 <= start < end and n / self.sample_rate < end <= (n + 1) / self.sample_rate:
            end = n / self.sample_rate   # the header's length, within a sample of the resampled one
        if not 0 <= start < end <= n / self.sample_rate + 1e-9:
            raise PipelineError(f"inpaint range {start}:{end} s must satisfy 0 <= start < end <= "
                                f"{n / self.sample_rate:g} (the input's length)")
        first, last = round(start * self.sample_rate), round(end * self.sample_rate)
        a, b = self._inpaint_segment(n, sampled, first, last)
        if b - a < n:   # a long clip: only a window around the gap is sampled
            sampled = b - a
        _, t, _ = self.latent_shape(sampled)
        per = self.vae.downsample_factor * self.mel.hop_length          # samples per latent step (an integer)
        # latent step idx covers samples [idx * per, (idx + 1) * per) with HiFi-GAN framing (frame k centred on
        # hop * k + hop / 2); TacotronSTFT centres frame k on hop * k, half a hop earlier. A window starts on a
        # latent step of the clip (a is a multiple of per): its steps are the clip's own
        shift = self.mel.hop_length // 2 if self.mel.framing == "tacotron" else 0
        idx = torch.arange(t)
        gap = ((idx + 1) * per - shift > first - a) & (idx * per - shift < last - a)
        finish = place = None
        if outside == "original":
            original = torch.from_numpy(np.ascontiguousarray(wav[:n], np.float32))
            weight = torch.from_numpy(inpaint_weight(n, start, end, self.sample_rate))
            if b - a == n:
                finish = lambda w: weight * w + (1 - weight) * original   # noqa: E731 (one expression)
            else:   # a window's output put into the input, which it is outside the gap
                def finish(w: torch.Tensor) -> torch.Tensor:
                    return torch.cat([original[:a], weight[a:b] * w + (1 - weight[a:b]) * original[a:b], original[b:]])
        elif b - a < n:   # the gap's latents decoded with the whole clip's: no seam where the window ends
            place = self._gap_into_clip(wav, n, a // per, gap)
        context = round(INPAINT_RANK_CONTEXT * self.sample_rate)
        span = (max(0, first - context), min(n, last + context))
        out = self._run(prompts, sampled, init_wav=wav[a:b], keep=(~gap).view(1, 1, t, 1), finish=finish,
                        cut=n if place is not None else b - a, rank_span=span, place=place, **kwargs)
        out.sampled = (a / self.sample_rate, b / self.sample_rate)   # the whole clip, or a window of a long one
        if outside == "decoded":
            return at_level(out, level)
        # back at the input's level in float32 the kept samples are near the input's, not on them (within 0.002 of
        # a 16-bit step at full scale): save_audio's nearest step writes a 16-bit input's integers back anyway, but
        # the float samples returned (and a float file) would differ, and a writer that rounds down (libsndfile's
        # floor, which tta used before) put some 11-17 % of a 16-bit input's one step lower, depending on the
        # input: they are the input's own, exactly
        kept = weight.numpy() == 0
        return at_level(out, level, offset, exact=(raw, kept))

    def _inpaint_segment(self, n: int, sampled: int, first: int, last: int) -> tuple[int, int]:
        """The samples [a, b) of an n-sample clip that inpainting samples for the gap [first, last): the gap with
        INPAINT_CONTEXT seconds on each side and at least the model's window (it was trained on clips that long),
        as whole UNet-sized runs of latent steps starting on one of the clip's; the whole clip (0, n) when that is
        not shorter than what sampling the clip would take. Outside it the latents are the input's either way. A
        window at the clip's end ends with it, its last step the clip's last (in part past the clip, padded as the
        whole clip's is): one ending up to a step short of it left a gap's last samples the input's."""
        per = self.vae.downsample_factor * self.mel.hop_length
        unit = per * self.unet.downsample_factor
        want = max(last - first + 2 * round(INPAINT_CONTEXT * self.sample_rate),
                   round(self.defaults.window * self.sample_rate))
        length = math.ceil(want / unit) * unit
        if length >= sampled or length >= n:
            return 0, n
        a = min(max(0, (first + last - length) // 2) // per, math.ceil((n - length) / per)) * per   # centred
        return a, min(a + length, n)

    def _gap_into_clip(self, wav: np.ndarray, n: int, step: int, gap: torch.Tensor):
        """outside="decoded" for a window of a longer clip starting at latent step `step`: a function putting the
        window's latents (B, C, t, F') at the steps `gap` (t,) marks into the whole clip's own latents, and the
        length to decode them at (n), so the output is the whole clip as the VAE and vocoder render it."""
        whole = self.encode_audio(np.ascontiguousarray(wav[:n], np.float32), n)

        def place(latents: torch.Tensor) -> tuple[torch.Tensor, int]:
            out = whole.to(latents.device).expand(latents.shape[0], -1, -1, -1).clone()
            g = gap.to(latents.device)
            out[:, :, step:step + latents.shape[2]][:, :, g] = latents[:, :, g]
            return out, n

        return place

    @without_caller_autocast
    def super_resolve(self, wav: np.ndarray, prompts: list[str], *, cutoff_hz: float, outside: str = "original",
                      **kwargs) -> Generation:
        """Regenerate the mel bands above `cutoff_hz` of wav (T,) (e.g. audio upsampled from 8 kHz).

        The latent rows below the cutoff are held at the input's throughout sampling. `outside` "original" (the
        default) then joins the input's own audio below the cutoff with the generated audio above it (STFT
        crossover fading over SR_CROSSOVER of the cutoff just below it), since the VAE decoder lets the
        regenerated rows spill into the low band; "decoded" returns the whole decoded clip.
        """
        check_edit_settings("super_resolve", kwargs)
        if outside not in EDIT_OUTSIDE:
            raise PipelineError(f"outside={outside!r}: expected one of {', '.join(EDIT_OUTSIDE)}")
        wav, level, offset = edit_input(wav)
        n, sampled = self._edit_length(wav)
        m = self.mel
        if not is_real(cutoff_hz) or not m.f_min < cutoff_hz < m.f_max:
            raise PipelineError(f"cutoff_hz={cutoff_hz!r} must be a number inside the mel band "
                                f"({m.f_min:g}, {m.f_max:g}) Hz")
        top = torch.from_numpy(latent_row_tops(m, self.vae.downsample_factor))
        keep = (top <= cutoff_hz).view(1, 1, 1, -1)
        if not bool(keep.any()):
            raise PipelineError(f"cutoff_hz={cutoff_hz} keeps no latent frequency row; raise it")
        finish = None
        if outside == "original":
            original = torch.from_numpy(np.ascontiguousarray(wav[:n], np.float32))
            finish = lambda w: band_splice(original, w, cutoff_hz, self.sample_rate)   # noqa: E731
        out = self._run(prompts, sampled, init_wav=wav, keep=keep, finish=finish, cut=n, **kwargs)
        return at_level(out, level, offset if outside == "original" else 0.0)

    def _run(self, prompts, num_samples: int, *, steps=None, guidance=None, negative: str = "", candidates=None,
             seed: int = 0, sampler=None, eta: float | None = None, batch_size: int = 1, guidance_rule: str | None = None,
             precision: str | None = None, progress: bool = False, return_candidates: bool = False,
             init_wav: np.ndarray | None = None, strength: float = 1.0, keep: torch.Tensor | None = None,
             context: torch.Tensor | None = None, datastore=None, neighbours: int | None = None,
             cut: int | None = None, context_guidance: str | None = None,
             prompt_ids: list[str] | None = None, finish=None, rank_span: tuple[int, int] | None = None,
             place=None) -> Generation:
        from tqdm.auto import tqdm

        d = self.defaults
        steps = d.steps if steps is None else steps
        guidance = d.guidance if guidance is None else guidance
        candidates = d.candidates if candidates is None else candidates
        eta = d.eta if eta is None else eta
        try:
            sampler = check_sampler(d.sampler if sampler is None else sampler)
            rule = check_guidance_rule(d.guidance_rule if guidance_rule is None else guidance_rule)
            precision = check_precision(d.precision if precision is None else precision)
        except ValueError as e:
            raise PipelineError(str(e)) from None
        negative = "" if negative is None else negative   # diffusers' negative_prompt=None: no negative prompt
        check_call(prompts, steps=steps, guidance=guidance, candidates=candidates, batch_size=batch_size, eta=eta,
                   seed=seed, negative=negative, prompt_ids=prompt_ids)
        steps, candidates, batch_size, seed = int(steps), int(candidates), int(batch_size), int(seed)
        guidance, eta = float(guidance), float(eta)
        if negative and guidance <= 1:
            log.warning("negative=%r has no effect at guidance <= 1 (there is no unconditional branch to steer)",
                        negative)
        context_guidance = d.context_guidance if context_guidance is None else context_guidance
        try:
            check_context_guidance(context_guidance)
        except ValueError as e:
            raise PipelineError(str(e)) from None
        for i, p in enumerate(prompts):
            if not p.strip():
                log.warning("%s: an empty prompt generates unconditionally",
                            prompt_ids[i] if prompt_ids else f"prompts[{i}]")
        text = self.clap.embed_text(list(prompts))                               # (P, D)
        found = None
        if context is None:
            context, found = self.retrieve(text, datastore, neighbours)          # (P, L, C) or None
        uncond = self.clap.embed_text([negative]) if guidance > 1 else None      # (1, D)
        uncond_context = None   # "guided": the null context, as many tokens as the neighbours' (same function)
        if context_guidance == "guided" and found is not None and uncond is not None:
            uncond_context = self.retrieval.null_context(1).expand(context.shape[0], context.shape[1], -1)
        init = None if init_wav is None else self.encode_audio(np.asarray(init_wav, np.float32), num_samples)
        shape = self.latent_shape(num_samples)
        jobs = [(i, j, seed + i + 1_000_003 * j) for i in range(len(prompts)) for j in range(candidates)]
        wavs: dict[tuple[int, int], torch.Tensor] = {}
        bar = tqdm(total=len(jobs), desc="generate", unit="clip", disable=not progress)
        per = batch_size * candidates                     # a prompt's candidates share its forward pass
        for b in range(0, len(jobs), per):
            chunk = jobs[b:b + per]
            seeds = [s for _, _, s in chunk]
            noise = draw_noise(shape, seeds)
            cond = text[[i for i, _, _ in chunk]]
            # one generator per item for the noise stochastic samplers add at every step (euler_a, ddpm, ddim
            # with eta > 0), so an item's audio does not depend on the batch it is generated in either; offset
            # by 2**40 so it is not the starting noise of another seed (seed s + 7 under the old offset of 7)
            generator = [torch.Generator(device="cpu").manual_seed(s + STEP_NOISE_OFFSET) for s in seeds]
            out = self.sample(noise, cond, None if uncond is None else uncond.expand(len(chunk), -1), num_samples,
                              steps=steps, guidance=guidance, sampler=sampler, eta=eta, strength=strength,
                              guidance_rule=rule, precision=precision,
                              init_latents=None if init is None else init.expand(len(chunk), -1, -1, -1),
                              keep=keep, place=place, context=_rows(context, [i for i, _, _ in chunk]),
                              uncond_context=_rows(uncond_context, [i for i, _, _ in chunk]), generator=generator,
                              progress=progress and len(jobs) <= per)
            for (i, j, _), w in zip(chunk, out):
                w = w if cut is None else w[:cut]
                wavs[(i, j)] = w if finish is None else finish(w)   # an edit's splice into its input
            bar.update(len(chunk))
        bar.close()
        out = self._rank(text, wavs, len(prompts), candidates, jobs, rank_span)
        out.neighbours, out.rank_span = found, rank_span
        if return_candidates:
            out.candidate_wavs = [[wavs[(i, j)].numpy() for j in range(candidates)] for i in range(len(prompts))]
        return out

    @without_caller_autocast
    def retrieve(self, text: torch.Tensor, datastore, neighbours: int | None):
        """(context (P, L, C) or None, neighbours per prompt or None) for prompts' embeddings text (P, D).

        A retrieval model without a datastore gets its null context; a datastore needs a retrieval model.
        """
        if datastore is None:
            if neighbours is not None:
                raise PipelineError(f"neighbours={neighbours} needs a datastore (--datastore DIR)")
            return (None if self.retrieval is None else self.retrieval.null_context(text.shape[0])), None
        if self.retrieval is None:
            raise PipelineError("this model was not trained with retrieval (no retrieval/ component); "
                                "generate without a datastore")
        from tta.ldm.retrieval_context import open_store, prompt_context

        k = self.retrieval.config.neighbours if neighbours is None else neighbours
        store = open_store(datastore, self.clap, k, latent_vae=self.retrieval.config.latent_vae)
        return prompt_context(self.retrieval, store, text, k)

    @without_caller_autocast
    def sample(self, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, num_samples: int, *,
               steps: int, guidance: float, sampler: str, eta: float = 0.0, place=None, **edit) -> torch.Tensor:
        """The core: noise (B, C, T', F') + embeddings cond / uncond (B, D) -> wav (B, num_samples) on CPU.

        `edit` passes strength / init_latents / keep / context / uncond_context / generator / progress /
        guidance_rule / precision on to `denoise`. Like steps and guidance, the guidance rule and the precision
        are not taken from the model's defaults here: they are "cfg" and "float32" unless given (the parity
        checks against diffusers call this directly). `place` (latents -> (latents, num_samples)), where given,
        puts the denoised latents into others before they are decoded (an inpainted window into its clip).
        """
        for name in edit:   # before any compute, naming this method (denoise's own TypeError named denoise())
            if name not in SAMPLE_PASSES_ON:
                raise TypeError(f"TTAPipeline.sample() got an unexpected keyword argument {name!r}")
        scheduler = make_scheduler(check_sampler(sampler), self.scheduler_config)
        if edit.get("context") is None and self.retrieval is not None:    # a retrieval model, no neighbours
            edit["context"] = self.retrieval.null_context(noise.shape[0])
        latents = denoise(self.unet, scheduler, noise, cond, uncond, steps=steps, guidance=guidance, eta=eta, **edit)
        if place is not None:   # an edit of a window of a longer clip: its latents placed into the clip's
            latents, num_samples = place(latents)
        return self.decode(latents, num_samples)

    def _rank(self, text, wavs, num_prompts: int, candidates: int, jobs, span=None) -> Generation:
        """Keep each prompt's candidate with the highest CLAP score cos(text, audio) (of samples span[0]:span[1]
        when given: an inpainted gap and its surroundings)."""
        keys = [(i, j) for i in range(num_prompts) for j in range(candidates)]
        clips = torch.stack([wavs[k] for k in keys])
        sims = self._scores(text[[i for i, _ in keys]], clips, span).view(num_prompts, candidates)
        best = sims.argmax(dim=1)
        seeds = [[s for i2, _, s in jobs if i2 == i] for i in range(num_prompts)]
        return Generation(wavs=[wavs[(i, int(best[i]))].numpy() for i in range(num_prompts)],
                          sample_rate=self.sample_rate, scores=[float(sims[i, best[i]]) for i in range(num_prompts)],
                          candidate_scores=sims.tolist(), seeds=seeds)

    @without_caller_autocast
    def clap_scores(self, prompts: list[str], wavs, span: tuple[int, int] | None = None) -> list[float]:
        """The CLAP score cos(text, audio) of each wav (T,) (all of one length) against its prompt, heard as
        candidates are ranked (samples span[0]:span[1] when given, Generation.rank_span): e.g. to score a
        candidate again once its caller has changed it (tta generate turns a clip too loud for its file down)."""
        if len(prompts) != len(wavs):
            raise PipelineError(f"clap_scores: {len(prompts)} prompts for {len(wavs)} wavs")
        clips = torch.from_numpy(np.stack([mono_audio(w, "clap_scores wav") for w in wavs]))
        return self._scores(self.clap.embed_text(list(prompts)), clips, span).tolist()

    def _scores(self, text: torch.Tensor, clips: torch.Tensor, span=None) -> torch.Tensor:
        """(N,) cos(text[n], audio of clips[n]) for text (N, D) and clips (N, T)."""
        if span is not None:
            clips = clips[:, span[0]:span[1]]
        shortest = int(0.1 * self.sample_rate)    # a CLAP needs at least one analysis window: score a very short
        if clips.shape[1] < shortest:             # clip zero-padded (the clip itself is returned as generated)
            clips = torch.nn.functional.pad(clips, (0, shortest - clips.shape[1]))
        audio = self.clap.embed_audio(clips.numpy(), self.sample_rate)
        return (audio * text).sum(-1)


def latent_row_tops(mel, factor: int) -> np.ndarray:
    """(n_mels // factor,) the highest mel-band edge (Hz) each latent frequency row of a VAE with downsampling
    `factor` covers: super-resolution keeps the rows whose top lies at or below the cutoff."""
    from tta.audio import import_librosa

    librosa = import_librosa()
    upper = librosa.mel_frequencies(mel.n_mels + 2, fmin=mel.f_min, fmax=mel.f_max, htk=False)[2:]   # band tops
    return upper.reshape(-1, factor).max(axis=1)


def edit_input(wav) -> tuple[np.ndarray, float, float]:
    """(an edit's input as the model heard its training audio: float32 mono, DC removed, peak 0.5; the factor
    that takes the model's output back to the input's level; the input's DC offset). Integer samples are refused
    (tta.audio.float_audio)."""
    from tta.audio import normalize_wav

    arr = mono_audio(wav, "edit input")
    mean = float(arr.mean())
    top = float(np.max(np.abs(arr - mean)))
    return normalize_wav(arr), (top / 0.5 if top > 0 else 1.0), mean


def mono_audio(wav, what: str) -> np.ndarray:
    """`wav` as float32 (T,) audio with T > 0, or a PipelineError naming `what`: integer samples
    (tta.audio.float_audio), another shape, no samples, NaN or inf."""
    try:
        arr = float_audio(wav, what)
    except AudioError as e:
        raise PipelineError(str(e)) from None
    if arr.ndim != 1 or not arr.size:
        raise PipelineError(f"{what}: expected mono audio of shape (T,) with T > 0, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise PipelineError(f"{what}: contains NaN or inf")
    return arr


def at_level(out: Generation, level: float, offset: float = 0.0,
             exact: tuple[np.ndarray, np.ndarray] | None = None) -> Generation:
    """An edit's Generation scaled back to its input's level (see edit_input), plus `offset` (the input's DC,
    for an output that holds the input's own samples); `exact` (input (T,), where (T,) bool): the samples the
    output holds of the input, copied from it rather than scaled back."""
    def back(w: np.ndarray) -> np.ndarray:
        w = w * np.float32(level) + np.float32(offset)
        if exact is not None:
            w[exact[1]] = exact[0][:len(w)][exact[1]]
        return w

    out.wavs = [back(w) for w in out.wavs]
    if out.candidate_wavs is not None:
        out.candidate_wavs = [[back(w) for w in ws] for ws in out.candidate_wavs]
    out.input_level, out.input_offset = float(level), float(offset)
    return out


def band_splice(low: torch.Tensor, high: torch.Tensor, cutoff_hz: float, sample_rate: int,
                n_fft: int = 1024) -> torch.Tensor:
    """(T,) audio holding `low` below `cutoff_hz` and `high` above it: their STFTs (Hann, n_fft, hop n_fft / 4)
    joined with a raised-cosine crossover from (1 - SR_CROSSOVER) x cutoff up to the cutoff, inverted."""
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = [torch.stft(x.double(), n_fft, n_fft // 4, window=window, pad_mode="constant", return_complex=True)
            for x in (low, high)]
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    x = ((freqs - (1 - SR_CROSSOVER) * cutoff_hz) / (SR_CROSSOVER * cutoff_hz)).clamp(0, 1)
    w = (0.5 - 0.5 * torch.cos(torch.pi * x))[:, None]                         # 0 in the low band, 1 above cutoff
    joined = spec[0] * (1 - w) + spec[1] * w
    return torch.istft(joined, n_fft, n_fft // 4, window=window, length=low.shape[0]).float()


def inpaint_weight(n: int, start: float, end: float, sample_rate: int) -> np.ndarray:
    """The splice weight (splice_weight) of an inpainted gap of seconds [start, end) in a clip of n samples."""
    first, last = round(start * sample_rate), round(end * sample_rate)
    return splice_weight(n, first, min(last, n), round(INPAINT_FADE * sample_rate))


def splice_weight(n: int, first: int, last: int, fade: int) -> np.ndarray:
    """(n,) float32 weight of generated audio for a gap [first, last) spliced into other audio: 1 inside the gap,
    0 outside it, and a raised-cosine ramp of `fade` samples centred on each edge that is not the clip's own
    (a gap shorter than `fade` gets ramps as long as the gap)."""
    half = max(1, min(fade, last - first) // 2)
    t = np.arange(n, dtype=np.float64) + 0.5                  # sample centres
    rise = t - (first - half) if first > 0 else np.where(t < last + half, np.inf, -np.inf)
    fall = (last + half) - t if last < n else np.where(t > first - half, np.inf, -np.inf)
    x = np.clip(np.minimum(rise, fall) / (2 * half), 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * x)).astype(np.float32)


def check_call(prompts, *, steps, guidance, candidates, batch_size, eta: float = 0.0, seed: int = 0,
               negative: str = "", prompt_ids=None) -> None:
    """Validate generation arguments before any compute; PipelineError names the bad one. Numbers may be numpy
    scalars (a sweep over np.arange); bools are not numbers here."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise PipelineError("prompts must be a non-empty list of strings")
    if any(not isinstance(p, str) for p in prompts):
        raise PipelineError("every prompt must be a string")
    if not isinstance(negative, str):
        raise PipelineError(f"negative={negative!r} must be a string (one negative prompt for every prompt; \"\" or "
                            "None is the unconditional embedding)")
    if prompt_ids is not None and (not isinstance(prompt_ids, (list, tuple)) or len(prompt_ids) != len(prompts)):
        raise PipelineError(f"prompt_ids={prompt_ids!r} must name each of the {len(prompts)} prompts")
    if not is_integer(steps) or steps < 1:
        raise PipelineError(f"steps={steps!r} must be an integer >= 1")
    if not is_real(guidance) or guidance < 0:
        raise PipelineError(f"guidance={guidance!r} must be a finite number >= 0")
    if not is_integer(candidates) or candidates < 1:
        raise PipelineError(f"candidates={candidates!r} must be an integer >= 1")
    if not is_integer(batch_size) or batch_size < 1:
        raise PipelineError(f"batch_size={batch_size!r} must be an integer >= 1")
    if not is_real(eta) or not 0 <= eta <= 1:
        raise PipelineError(f"eta={eta!r} must be in [0, 1]")
    if not is_integer(seed) or not 0 <= seed < MAX_SEED:
        raise PipelineError(f"seed={seed!r} must be an integer in [0, 2**62)")


def check_device(device) -> torch.device:
    """`device` (a torch.device or its name) as a torch.device, or a PipelineError naming it: a dtype (the UNet's
    arithmetic is a call's `precision`), a name torch does not know, or a CUDA / MPS device this machine lacks."""
    from tta.device import torch_device

    try:
        return torch_device(device)
    except ValueError as e:
        hint = (f"; the UNet's arithmetic is chosen per call with precision= ({', '.join(PRECISIONS)})"
                if isinstance(device, torch.dtype) else "")
        raise PipelineError(f"{e}{hint}") from None


def read_pipeline_json(folder: str | os.PathLike) -> dict:
    """Parse and check `folder/pipeline.json` (components named, format version known)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: model folder not found")
    path = folder / PIPELINE_FILE
    if not path.is_file():
        hint = (f"; it looks like an LDM training run: its pipeline is {folder / 'pipeline'}"
                if (folder / "pipeline" / PIPELINE_FILE).is_file() else "")
        raise PipelineError(f"{folder}: not a tta pipeline folder (no {PIPELINE_FILE}){hint}")
    spec = read_json(path, PipelineError)
    if not isinstance(spec, dict) or type(spec.get("format_version")) is not int \
            or spec["format_version"] != FORMAT_VERSION:   # true == 1 in Python, not in the format
        raise PipelineError(f"{path}: expected format_version {FORMAT_VERSION}")
    parts = spec.get("components")
    if not isinstance(parts, dict):
        raise PipelineError(f"{path}: no 'components' mapping")
    for name in REQUIRED:
        if name not in parts:
            raise PipelineError(f"{path}: component {name!r} is missing from 'components'")
    for name, sub in parts.items():
        if not isinstance(sub, str) or not sub.strip():
            raise PipelineError(f"{path}: components.{name} is {sub!r}; expected the name of its sub-folder")
    return spec


def _rows(context: torch.Tensor | None, index: list[int]) -> torch.Tensor | None:
    """The context rows of a chunk of jobs; a one-row context (shared by all prompts) is expanded."""
    if context is None:
        return None
    return context.expand(len(index), -1, -1) if context.shape[0] == 1 else context[index]


def vocoder_class(folder: Path) -> type:
    """The class of the vocoder component in `folder`: HiFi-GAN, Vocos, Griffin-Lim or Griffin-Lim with a post-net."""
    try:
        return _vocoder_class(folder)
    except CheckpointError as e:
        raise PipelineError(f"component 'vocoder' cannot be loaded: {e}") from None


def _load(folder: Path, parts: dict, name: str, cls):
    try:
        return load_component(folder / parts[name], cls)
    except CheckpointError as e:
        raise PipelineError(f"{folder}: component {name!r} cannot be loaded: {e}") from None
