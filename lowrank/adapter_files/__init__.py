"""Adapter files: the format (:mod:`.format`), crash-safe writing (:mod:`.atomic`), save and load
(:mod:`.save_load`), and PEFT interop (:mod:`.peft_interop`).

``from lowrank import save_adapters, load_adapters, export_peft, import_peft`` is the usual way in.
"""
