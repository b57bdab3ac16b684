"""The text the engine is given: a job's text after the lexicons and the number rules."""
