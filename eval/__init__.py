"""Evaluation: embedders, FAD/FD/KL/IS, CLAP score, reports."""
