"""Speech engines behind `worker.synth.Synthesizer`: espeak, fake (the test double), cosyvoice.

Each knows nothing of Celery; `worker.synth.load_engine` imports the one the settings name.
"""
