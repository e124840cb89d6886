"""General MIDI names as natural caption phrases, playable key ranges, and the GM percussion map."""

from __future__ import annotations

# (caption phrase, lowest, highest playable MIDI key) for GM programs 0-127. Ranges keep every render
# inside the instrument's real register (FluidR3's Contrabass is silent at middle C, for example).
GM_PROGRAMS: tuple[tuple[str, int, int], ...] = (
    ("a grand piano", 28, 100), ("a bright acoustic piano", 28, 100), ("an electric grand piano", 28, 100),
    ("a honky-tonk piano", 36, 96), ("an electric piano", 36, 96), ("a chorused electric piano", 36, 96),
    ("a harpsichord", 36, 89), ("a clavinet", 36, 84),
    ("a celesta", 60, 96), ("a glockenspiel", 72, 105), ("a music box", 60, 96), ("a vibraphone", 53, 89),
    ("a marimba", 45, 96), ("a xylophone", 65, 105), ("tubular bells", 60, 77), ("a dulcimer", 48, 84),
    ("a drawbar organ", 36, 96), ("a percussive organ", 36, 96), ("a rock organ", 36, 96),
    ("a church organ", 36, 96), ("a reed organ", 36, 96), ("an accordion", 53, 89),
    ("a harmonica", 60, 84), ("a tango accordion", 53, 89),
    ("a nylon-string acoustic guitar", 40, 84), ("a steel-string acoustic guitar", 40, 84),
    ("a jazz guitar", 40, 84), ("a clean electric guitar", 40, 84), ("a muted electric guitar", 40, 76),
    ("an overdriven electric guitar", 40, 84), ("a distorted electric guitar", 40, 84),
    ("electric guitar harmonics", 52, 88),
    ("an acoustic bass", 28, 55), ("a fingered electric bass", 28, 55), ("a picked electric bass", 28, 55),
    ("a fretless bass", 28, 60), ("a slap bass", 28, 55), ("a slap bass", 28, 55), ("a synth bass", 28, 60),
    ("a synth bass", 28, 60),
    ("a violin", 55, 96), ("a viola", 48, 84), ("a cello", 36, 72), ("a double bass", 28, 55),
    ("tremolo strings", 40, 88), ("pizzicato strings", 36, 84), ("an orchestral harp", 36, 96),
    ("timpani", 40, 57),
    ("a string ensemble", 36, 96), ("a slow string ensemble", 36, 96), ("synth strings", 36, 96),
    ("synth strings", 36, 96), ("a choir singing aah", 48, 79), ("a choir singing ooh", 48, 79),
    ("a synth voice", 48, 79), ("an orchestra hit", 48, 72),
    ("a trumpet", 55, 82), ("a trombone", 40, 72), ("a tuba", 28, 58), ("a muted trumpet", 55, 82),
    ("a French horn", 41, 77), ("a brass section", 41, 82), ("a synth brass", 41, 82), ("a synth brass", 41, 82),
    ("a soprano saxophone", 56, 88), ("an alto saxophone", 49, 81), ("a tenor saxophone", 44, 76),
    ("a baritone saxophone", 36, 69), ("an oboe", 58, 91), ("an English horn", 52, 81), ("a bassoon", 34, 72),
    ("a clarinet", 50, 91),
    ("a piccolo", 74, 102), ("a flute", 60, 96), ("a recorder", 60, 86), ("a pan flute", 60, 86),
    ("a blown bottle", 60, 84), ("a shakuhachi", 55, 84), ("a whistle", 60, 96), ("an ocarina", 60, 84),
    ("a square wave synth lead", 48, 84), ("a sawtooth synth lead", 48, 84), ("a calliope synth lead", 48, 84),
    ("a chiff synth lead", 48, 84), ("a charang synth lead", 48, 84), ("a synth voice lead", 48, 84),
    ("a synth lead in fifths", 48, 84), ("a bass and lead synth", 36, 72),
    ("a new age synth pad", 48, 84), ("a warm synth pad", 48, 84), ("a polysynth pad", 48, 84),
    ("a choir synth pad", 48, 84), ("a bowed glass pad", 48, 84), ("a metallic synth pad", 48, 84),
    ("a halo synth pad", 48, 84), ("a sweeping synth pad", 48, 84),
    ("a rain synth effect", 48, 84), ("a soundtrack synth effect", 48, 84), ("a crystal synth effect", 48, 84),
    ("an atmospheric synth", 48, 84), ("a bright synth", 48, 84), ("a goblin synth effect", 48, 84),
    ("a synth with echoes", 48, 84), ("a sci-fi synth", 48, 84),
    ("a sitar", 48, 77), ("a banjo", 48, 84), ("a shamisen", 50, 79), ("a koto", 55, 84), ("a kalimba", 60, 84),
    ("a bagpipe", 55, 77), ("a fiddle", 55, 96), ("a shanai", 60, 84),
    ("a tinkle bell", 72, 96), ("an agogo", 60, 84), ("steel drums", 52, 76), ("a woodblock", 60, 84),
    ("a taiko drum", 36, 60), ("a melodic tom", 40, 64), ("a synth drum", 40, 64), ("a reverse cymbal", 48, 72),
)

# GM programs whose sound is a noise effect rather than an instrument (guitar fret noise, breath, seashore,
# birds, telephone, helicopter, applause, gunshot): rendered as sound effects with their own captions.
GM_EFFECTS: dict[int, tuple[str, ...]] = {
    120: ("guitar fret noise", "fingers sliding on guitar strings"),
    121: ("a breath noise", "someone breathing out"),
    122: ("waves on a seashore", "the sound of the sea"),
    123: ("birds tweeting", "a bird chirping"),
    124: ("a telephone ringing", "an old telephone ring"),
    125: ("a helicopter", "a helicopter flying"),
    126: ("applause", "an audience clapping"),
    127: ("a gunshot", "a gun firing"),
}

# Instrument programs 0-119 share the table above; 120-127 are effects.
assert len(GM_PROGRAMS) == 120, len(GM_PROGRAMS)

# Drum kits of FluidR3_GM in bank 128: preset -> caption phrase.
DRUM_KITS: dict[int, str] = {
    0: "a standard drum kit", 8: "a room drum kit", 16: "a power drum kit", 24: "an electronic drum kit",
    25: "a TR-808 drum machine", 32: "a jazz drum kit", 40: "a brush drum kit", 48: "an orchestral percussion kit",
}

# GM percussion key map (35-81) as caption phrases.
GM_DRUMS: dict[int, str] = {
    35: "an acoustic bass drum", 36: "a bass drum", 37: "a side stick", 38: "a snare drum", 39: "a hand clap",
    40: "an electric snare", 41: "a low floor tom", 42: "a closed hi-hat", 43: "a high floor tom",
    44: "a pedal hi-hat", 45: "a low tom", 46: "an open hi-hat", 47: "a low-mid tom", 48: "a high-mid tom",
    49: "a crash cymbal", 50: "a high tom", 51: "a ride cymbal", 52: "a Chinese cymbal", 53: "a ride bell",
    54: "a tambourine", 55: "a splash cymbal", 56: "a cowbell", 57: "a crash cymbal", 58: "a vibraslap",
    59: "a ride cymbal", 60: "a high bongo", 61: "a low bongo", 62: "a muted high conga", 63: "an open high conga",
    64: "a low conga", 65: "a high timbale", 66: "a low timbale", 67: "a high agogo", 68: "a low agogo",
    69: "a cabasa", 70: "maracas", 71: "a short whistle", 72: "a long whistle", 73: "a short guiro",
    74: "a long guiro", 75: "claves", 76: "a high woodblock", 77: "a low woodblock", 78: "a muted cuica",
    79: "an open cuica", 80: "a muted triangle", 81: "an open triangle",
}

NOTE_NAMES = ("C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "A flat", "A", "B flat", "B")


def note_name(key: int) -> str:
    """MIDI key -> spoken note name with octave ("C4" = 60 -> "C 4")."""
    return f"{NOTE_NAMES[key % 12]} {key // 12 - 1}"


def indefinite(text: str) -> str:
    """"a" or "an" before `text`, by sound for note letters ("an F sharp", "an A", "a G", "an oboe")."""
    first = text.split(" ", 1)[0]
    if len(first) == 1 and first in "AEF":
        return "an"
    return "an" if text[:1].lower() in "aeio" else "a"


def bare(phrase: str) -> str:
    """Drop a leading article: "a snare drum" -> "snare drum"."""
    for article in ("a ", "an "):
        if phrase.startswith(article):
            return phrase[len(article):]
    return phrase
