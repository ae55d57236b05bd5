"""Baseline cold-start models behind the :class:`~pipeline.baselines.base.ColdStartModel` protocol."""
