"""`lumina-mgpt demo`: a Gradio app (text to image, edit / Omni tasks, chat) over the public pipelines.

Only `app.py` imports gradio; `limits`, `preview`, `handlers` and `cli` do not, so registering the
command and unit-testing the handlers work without the `demo` extra installed.
"""
