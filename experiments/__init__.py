"""The research protocols behind the results in ``docs/results/``: Table 1 of the paper
(``reproduce.py``), nested selection (``nested.py``), cross-domain (``crossdomain.py``) and
seed stability (``stability.py``), with their worker pool and provenance (``units.py``), fold
statistics, tables and figures. They train through ``trainer.train`` directly, without TFX, and
import nothing of ``pipeline`` (nor ``pipeline`` of them); ``cme-ser reproduce`` runs them."""
