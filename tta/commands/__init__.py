"""Command groups that drive several rooms at once (training, generation, evaluation, reports).

They sit at the CLI layer: each may use everything below it. `tta experiment` lives here.
"""
