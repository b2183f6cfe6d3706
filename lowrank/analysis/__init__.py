"""ΔM/ΔD of anyone's checkpoints, read without building a model: the analysis behind ``python -m lowrank.analyze``.

* :mod:`.streaming`: safetensors files (local, sharded or on the hub) read tensor by tensor, in row blocks;
* :mod:`.checkpoints`: which kind of folder a checkpoint is (full weights, PEFT, lowrank, a Trainer run);
* :mod:`.row_changes`: ΔM and ΔD of one matrix from full weights or adapter factors, never merged;
* :mod:`.command`: the command line (``python -m lowrank.analyze``);
* :mod:`.callback`: the same measurements during a 🤗 Trainer run.

It uses the course's layers and ΔM/ΔD formula (:mod:`lowrank.magnitude_direction`), never the other way round.
"""
