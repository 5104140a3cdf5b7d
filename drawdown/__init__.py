"""The command line and the settings every drawdown process reads."""
