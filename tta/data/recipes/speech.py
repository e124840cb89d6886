"""Synthetic speech with captions: espeak-ng (many languages, male/female/whisper/robotic variants) and
flite (four English voices). Render specs: ("espeak", voice, words_per_minute, pitch, text) and
("flite", voice, text); both call the program, read its wav and resample to 16 kHz.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tta.audio import load_audio
from tta.data.recipes.clips import SAMPLE_RATE, Candidate

ESPEAK_LICENCE = "GPL-3+ (espeak-ng; generated speech)"
FLITE_LICENCE = "BSD-like (flite / CMU voices; generated speech)"

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


def speech_status() -> dict[str, str | None]:
    """{"espeak-ng": None or what is missing, "flite": ...}."""
    return {"espeak-ng": None if shutil.which("espeak-ng") else "espeak-ng not found (Debian package espeak-ng)",
            "flite": None if shutil.which("flite") else "flite not found (Debian package flite)"}


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
                captions = [f"{who} speaking {language}", f"a {adjective} voice talking in {language}",
                            f"a text-to-speech voice reading a sentence in {language}"]
                if code == "en":
                    captions.insert(0, f'{who} says "{text.rstrip(".?!").lower()}"')
                if wpm >= 190:
                    captions.append(f"{who} speaking {language} quickly")
                out.append(Candidate(key=f"speech/espeak/{code}/{i:02d}-{variant}", kind="speech",
                                     captions=tuple(captions), label=f"speech {language}", role="speech",
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


def render_speech(spec: tuple) -> np.ndarray:
    """Run espeak-ng or flite for a spec and return (T,) float32 at 16 kHz."""
    with tempfile.TemporaryDirectory(prefix="tta-speech-") as tmp:
        out = Path(tmp) / "speech.wav"
        if spec[0] == "espeak":
            _, voice, wpm, pitch, text = spec
            cmd = ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(out), text]
        elif spec[0] == "flite":
            _, voice, text = spec
            cmd = ["flite", "-voice", voice, "-t", text, "-o", str(out)]
        else:
            raise ValueError(f"not a speech spec: {spec[0]!r}")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{cmd[0]} failed for {spec[1]!r}: {proc.stderr.strip()[-200:]}")
        wav, _ = load_audio(out, SAMPLE_RATE)
    return wav
