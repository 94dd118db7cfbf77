"""``llama-avsr serve``: a local web demo of a model (Gradio), built on the Python inference API.

``demo.py`` holds what the page does (load, preview, noise, transcribe, sweep) without a web framework;
``app.py`` holds the page and its handlers.
"""
