"""The Gradio theme for our pages: the default look with system fonts only.

Gradio's default theme loads its fonts from Google Fonts in the participant's browser. That is a network
request at run time (it fails on offline machines, and letters then render in a mix of fonts) and it
would tell a third party the participant's IP address. System fonts avoid both.
"""

from __future__ import annotations

SANS = ("ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif")
MONO = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")


def offline_theme():
    import gradio as gr

    return gr.themes.Default(font=list(SANS), font_mono=list(MONO))
