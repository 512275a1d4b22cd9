"""Predicted purchasing from a shop's own orders: BG/NBD, Gamma-Gamma and the per-customer scores.

Owns the database-free model core: :mod:`.summary` (orders to the RFM summary),
:mod:`.bgnbd` (repeat purchases), :mod:`.gammagamma` (spend per order, CLV) and
:mod:`.scores` (minimum history, ``fit``, ``score``).  See docs/predictions.md.
"""
