from elbokit.cli import entry

entry()
