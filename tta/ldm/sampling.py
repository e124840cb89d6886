"""Samplers by name (diffusers schedulers) and the classifier-free-guided denoising loop.

Every sampler shares one training noise schedule (the `scheduler/` config of a pipeline or a run's
`diffusion` section) and differs only in how it walks it:

    ddim      Song et al. 2021 (eta = 0 deterministic; eta > 0 adds noise)
    dpmsolver++  Lu et al. 2022, multistep 2nd order (good at 20-25 steps)
    euler / euler_a / heun / lms   Karras et al. 2022 style sigma-space solvers (euler_a: ancestral)
    pndm      Liu et al. 2022 (PLMS, skip_prk_steps)
    ddpm      Ho et al. 2020 ancestral sampling (needs many steps)

Guidance is AudioLDM's (Ho & Salimans 2022): pred = uncond + g * (cond - uncond), with the unconditional
branch conditioned on the CLAP embedding of "" (or of a negative prompt); g <= 1 skips the second pass.
Edits (Meng et al. 2022 SDEdit; AudioLDM §4 inpainting / super-resolution) are the same loop started
part-way (`strength`) and/or with a `keep` mask whose latents are re-imposed, re-noised to the current
level, after every step.

All noise is drawn on a CPU `torch.Generator`, so a seed gives the same audio on every device.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from tta.config import check_numbers

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "dpmsolver++", "euler", "euler_a", "heun", "lms", "pndm", "ddpm")
# How the conditional and unconditional predictions combine: "cfg", classifier-free guidance (Ho & Salimans
# 2022); "apg", its update projected orthogonally to the conditional x0 estimate (adaptive projected guidance,
# Sadat et al. 2024, with the parallel part dropped and no momentum or norm threshold).
GUIDANCE_RULES = ("cfg", "apg")
# arithmetic of the UNet's forward passes while sampling: "bfloat16" runs them under torch.autocast (weights stay
# float32; the latents, the scheduler and the guidance stay float32); "auto" picks bfloat16 where the device
# computes it natively (`native_bfloat16`) and float32 elsewhere
PRECISIONS = ("float32", "bfloat16", "auto")
STOCHASTIC = ("euler_a", "ddpm")    # plus ddim with eta > 0
# samplers whose multistep state diffusers restarts wrongly when the first timesteps are cut off (strength < 1):
# PNDM's warm-up list repeats a timestep, LMS takes its order from the absolute step index
PART_WAY_REFUSED = ("PNDMScheduler", "LMSDiscreteScheduler")


@dataclass(frozen=True)
class DiffusionConfig:
    """The training noise schedule (AudioLDM: 1000 steps, betas = linspace(sqrt .0015, sqrt .0195)^2)."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"

    def __post_init__(self) -> None:
        # a schedule built in Python: "1000" failed on "'<' not supported", a bool beta passed as a number
        check_numbers(self, "diffusion")
        if self.num_train_timesteps < 2:
            raise ValueError(f"diffusion.num_train_timesteps={self.num_train_timesteps} must be >= 2")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"diffusion betas must satisfy 0 < beta_start ({self.beta_start}) < "
                             f"beta_end ({self.beta_end}) < 1")

    def scheduler_config(self) -> dict:
        return {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": self.beta_schedule,
                "beta_start": self.beta_start, "beta_end": self.beta_end,
                "prediction_type": self.prediction_type}


def check_sampler(name: str) -> str:
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    return name


# sampler name -> the diffusers scheduler class and the settings tta samples it with
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False}),
    "euler": ("EulerDiscreteScheduler", {}), "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}), "lms": ("LMSDiscreteScheduler", {}),
}


def make_scheduler(name: str, base: dict):
    """A fresh diffusers scheduler `name` over the noise schedule `base` (a diffusers scheduler config)."""
    import inspect

    import diffusers

    check_sampler(name)
    cls_name, settings = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
            "trained_betas", "steps_offset")
    common = {k: base[k] for k in keys if k in base and base[k] is not None}
    if base.get("rescale_betas_zero_snr"):   # a zero-terminal-SNR model: part of the schedule it was trained on
        if "rescale_betas_zero_snr" not in inspect.signature(cls.__init__).parameters:
            raise ValueError(f"the model's scheduler config sets rescale_betas_zero_snr (zero terminal SNR), which "
                             f"the {name} sampler cannot follow; use ddim, ddpm, dpmsolver++, euler or euler_a")
        common["rescale_betas_zero_snr"] = True
    return cls(**common, **settings)


def sampler_name_of(scheduler, default: str | None = "ddim") -> str | None:
    """The sampler name of a diffusers scheduler instance (for pipeline defaults), or `default` for a scheduler
    class tta has no sampler for."""
    names = {cls_name: name for name, (cls_name, _) in SCHEDULERS.items()}
    return names.get(type(scheduler).__name__, default)


def draw_noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """(B, *shape) float32 standard normal noise, item b drawn on a CPU generator seeded seeds[b].

    Per-item seeds make an item's noise independent of the batch it is generated in.
    """
    out = []
    for s in seeds:
        g = torch.Generator(device="cpu").manual_seed(int(s))
        out.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(out)


_warned_start: set[tuple[str, int]] = set()


def strength_steps(steps: int, strength: float) -> int:
    """How many of `steps` sampler steps an edit at `strength` runs (the last ones; 0 is refused)."""
    return min(int(round(steps * strength)), steps)


def check_strength_leaves_a_step(steps: int, strength: float, *, where: str | None = None,
                                 more_steps: str = "more steps") -> None:
    """Refuse an edit at `strength` that runs none of its `steps` sampler steps (strength_steps is 0) with a
    ValueError naming the least strength that runs one; `where` names the two settings (by default
    "strength=S with steps=N"), `more_steps` the other way out (a command line names its flag)."""
    if strength_steps(steps, strength) < 1:
        raise ValueError(f"{where or f'strength={strength} with steps={steps}'} leaves no denoising step (it needs "
                         f"strength above {0.5 / steps:.3g}, or {more_steps})")


def check_part_way(sampler: str, strength: float) -> None:
    """Refuse an edit that starts part-way (strength < 1) with a sampler that cannot (PART_WAY_REFUSED), before
    anything is computed; an unknown sampler name is left to check_sampler."""
    if strength < 1 and SCHEDULERS.get(sampler, ("",))[0] in PART_WAY_REFUSED:
        raise ValueError(f"the {sampler} sampler cannot start part-way (strength < 1): its multistep history would "
                         "restart at the wrong timestep or order; use ddim, euler, euler_a, heun, dpmsolver++ or ddpm")


def set_steps(scheduler, steps: int, strength: float, device) -> torch.Tensor:
    """Set `steps` inference steps and return the timesteps to run: all of them at strength 1, the last
    round(steps * strength) for an SDEdit start part-way."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if not 0 < strength <= 1:
        raise ValueError(f"strength={strength} must be in (0, 1]")
    if strength < 1 and type(scheduler).__name__ in PART_WAY_REFUSED:
        check_part_way(sampler_name_of(scheduler), strength)
    train_steps = int(scheduler.config.num_train_timesteps)
    if steps > train_steps:
        raise ValueError(f"steps={steps} exceeds the {train_steps} timesteps the model was trained on")
    try:
        scheduler.set_timesteps(steps, device=device)
    except ValueError as e:   # e.g. DDIM with an offset past the last training timestep
        raise ValueError(f"steps={steps}: the {sampler_name_of(scheduler)} sampler refuses it ({e})") from None
    timesteps = scheduler.timesteps
    first, ratio = int(timesteps[0]), -(-train_steps // steps)
    if first < train_steps - 1 - 2 * ratio and (
            sampler_name_of(scheduler), steps) not in _warned_start:
        _warned_start.add((sampler_name_of(scheduler), steps))   # "leading" spacing on a count that does not divide
        log.warning("steps=%d: the %s sampler starts at timestep %d of %d, in latents that are pure noise; a step "
                    "count that divides %d (or dpmsolver++ / euler) starts at the end", steps,
                    sampler_name_of(scheduler), first, train_steps, train_steps)
    if len(torch.unique(timesteps)) * getattr(scheduler, "order", 1) < len(timesteps) and \
            sampler_name_of(scheduler) in ("dpmsolver++", "ddim", "ddpm"):
        # spacing rounded two steps onto one timestep: a zero-length step that turns the latents into NaN
        raise ValueError(f"steps={steps} is too many for the {sampler_name_of(scheduler)} sampler on a "
                         f"{train_steps}-step schedule (timesteps repeat); use fewer steps")
    if strength < 1:
        check_strength_leaves_a_step(steps, strength)
        start = (steps - strength_steps(steps, strength)) * scheduler.order
        timesteps = timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
    return timesteps


def check_guidance_rule(name: str) -> str:
    if name not in GUIDANCE_RULES:
        raise ValueError(f"unknown guidance rule {name!r}; valid guidance rules: {', '.join(GUIDANCE_RULES)}")
    return name


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; valid precisions: {', '.join(PRECISIONS)}")
    return name


def native_bfloat16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` has bfloat16 arithmetic in hardware (a CUDA GPU that reports it; a CPU with AVX512-BF16
    or AMX). Emulated bfloat16 is slower than float32, so "auto" precision only uses it where this is True."""
    device = torch.device(device)
    if device.type == "cuda":   # bfloat16 tensor cores from Ampere (compute capability 8) on; older GPUs emulate it
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")   # torch.cpu's CPU-feature probes
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(name: str, device: torch.device | str = "cpu") -> str:
    """"float32" or "bfloat16": what precision `name` means on `device`."""
    check_precision(name)
    if name == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return name


def guide(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, guidance: float, rule: str = "cfg", *,
          x: torch.Tensor | None = None, alpha_cumprod: float | torch.Tensor | None = None,
          prediction_type: str = "epsilon") -> torch.Tensor:
    """Combine one step's unconditional and conditional predictions (B, C, T', F').

    "cfg": pred_uncond + guidance (pred_cond - pred_uncond). "apg": in x0 space (x: the model's input, in the
    variance-preserving form sqrt(a) x0 + sqrt(1 - a) noise with a = alpha_cumprod), the difference of the two
    x0 estimates loses its component along the conditional estimate, x0 = x0_cond + (guidance - 1) * that
    orthogonal part, and the result goes back to the model's prediction type. Pushing along x0_cond mostly
    scales it up, which is what over-saturates high guidance; the orthogonal part carries the prompt.
    """
    if rule == "cfg":
        return pred_uncond + guidance * (pred_cond - pred_uncond)
    check_guidance_rule(rule)
    a = torch.as_tensor(alpha_cumprod, dtype=torch.float32, device=x.device)
    sa, sb = a.sqrt(), (1 - a).sqrt()
    eps = prediction_type == "epsilon"       # else v-prediction: v = sqrt(a) noise - sqrt(1 - a) x0
    x0_cond, x0_uncond = ((x - sb * p) / sa if eps else sa * x - sb * p for p in (pred_cond, pred_uncond))
    diff = (x0_cond - x0_uncond).flatten(1)
    unit = x0_cond.flatten(1) / x0_cond.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-12)
    orthogonal = diff - (diff * unit).sum(dim=1, keepdim=True) * unit
    x0 = x0_cond + (guidance - 1) * orthogonal.view_as(x0_cond)
    return (x - sa * x0) / sb if eps else (sa * x - x0) / sb


@torch.no_grad()
def denoise(unet, scheduler, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, *,
            steps: int, guidance: float, guidance_rule: str = "cfg", eta: float = 0.0, strength: float = 1.0,
            init_latents: torch.Tensor | None = None, keep: torch.Tensor | None = None,
            context: torch.Tensor | None = None, uncond_context: torch.Tensor | None = None,
            generator: torch.Generator | list | None = None, progress: bool = False,
            precision: str = "float32") -> torch.Tensor:
    """Run the guided reverse process; returns x_0 latents (B, C, T', F') on the unet's device.

    noise: (B, C, T', F') standard normal (drawn on CPU); cond / uncond: (B, D) CLAP embeddings
    (uncond may be None when guidance <= 1). init_latents (B, C, T', F'): the encoded input of an edit;
    strength < 1 starts from it noised to the matching level (SDEdit). keep: bool mask broadcastable to
    the latents, True where init_latents are kept (inpainting: times outside the gap; super-resolution:
    frequencies below the cut-off); kept latents are re-noised to the current level after every step.
    generator: the noise of stochastic samplers, one CPU generator or a list of one per item.
    context (B, L, C): the retrieval context of both guidance branches, unless `uncond_context` (B, L, C) is given
    for the unconditional one (then guidance pushes along the context's effect too).
    guidance_rule: "cfg" or "apg" (`guide`). precision: the UNet's arithmetic (`PRECISIONS`); its output is
    taken back to float32 at every step, so only the network's forward pass is rounded.
    """

    check_guidance_rule(guidance_rule)
    device = next(unet.parameters()).device
    low = resolve_precision(precision, device) == "bfloat16"
    noise = noise.to(device)
    if (strength < 1 or keep is not None) and init_latents is None:
        raise ValueError("strength < 1 and keep masks need init_latents (the encoded input audio)")
    timesteps = set_steps(scheduler, steps, strength, device)
    if strength < 1:
        init = init_latents.to(device)
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(noise.shape[0]))
    else:
        latents = noise * scheduler.init_noise_sigma
    use_cfg = guidance > 1.0 and uncond is not None
    embeds = torch.cat([uncond, cond]).to(device) if use_cfg else cond.to(device)
    if uncond_context is not None and (context is None or uncond_context.shape != context.shape):
        raise ValueError("uncond_context needs a context of the same shape")
    ctx = None if context is None else (torch.cat([context if uncond_context is None else uncond_context, context])
                                        if use_cfg else context).to(device)
    params = set(inspect.signature(scheduler.step).parameters)
    extra = {}
    if "eta" in params:
        extra["eta"] = eta
    elif eta > 0:
        log.warning("eta=%g has no effect with the %s sampler (only ddim takes it)", eta, sampler_name_of(scheduler))
    if "generator" in params:
        extra["generator"] = generator
    keep = None if keep is None else keep.to(device)
    # an outer (disabled) autocast context keeps autocast's bfloat16 copies of the weights from one step to the
    # next (the cache is dropped when the outermost context exits): the same arithmetic, without re-casting
    # every weight at every step (0.3 s of a 10 s clip's 1.8 s on 2 CPU threads)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=False) if low else contextlib.nullcontext():
        return _loop(unet, scheduler, timesteps, latents, noise, init_latents, keep, embeds, ctx, use_cfg, guidance,
                     guidance_rule, extra, device, low, progress)


def _loop(unet, scheduler, timesteps, latents, noise, init_latents, keep, embeds, ctx, use_cfg, guidance,
          guidance_rule, extra, device, low, progress):
    """denoise's sampler loop."""
    from tqdm.auto import tqdm

    for i, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress, leave=False)):
        x_in = torch.cat([latents, latents]) if use_cfg else latents
        x_in = scheduler.scale_model_input(x_in, t)
        t_batch = t.reshape(1).expand(x_in.shape[0]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low):
            pred = unet(x_in, t_batch, embeds, ctx)
        pred = pred.float()
        if use_cfg:
            pred_uncond, pred_cond = pred.chunk(2)
            a = None
            if guidance_rule != "cfg":   # the level of an interpolated (Euler-family) timestep: the nearest one's
                a = scheduler.alphas_cumprod[min(round(float(t)), len(scheduler.alphas_cumprod) - 1)]
            pred = guide(pred_uncond, pred_cond, guidance, guidance_rule, x=x_in.chunk(2)[0].float(),
                         alpha_cumprod=a, prediction_type=scheduler.config.prediction_type)
        latents = scheduler.step(pred, t, latents, **extra).prev_sample
        if keep is not None:
            init = init_latents.to(device)
            if i + 1 < len(timesteps):
                known = scheduler.add_noise(init, noise, timesteps[i + 1:i + 2].repeat(noise.shape[0]))
            else:
                known = init
            latents = torch.where(keep, known, latents)
    return latents


def denoise_loss_target(scheduler_config: dict, latents: torch.Tensor, noise: torch.Tensor,
                        timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy latents, regression target) of one training step for ε- or v-prediction.

    x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) ε; target ε, or v = sqrt(a_t) ε - sqrt(1 - a_t) x_0
    (Salimans & Ho 2022).
    """
    a = alphas_cumprod.to(latents.device)[timesteps].float().view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    if scheduler_config["prediction_type"] == "epsilon":
        return noisy, noise
    return noisy, a.sqrt() * noise - (1 - a).sqrt() * latents
