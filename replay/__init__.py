"""The analysts' replay: exact usage for any time window, folded from the raw input log.

usage.py reads the customer topic's partitions (several processes when asked) and folds each the
way the engine does; output.py turns the result into a table, CSV, JSON or a plot; commands.py is
`drawdown replay`.
"""
