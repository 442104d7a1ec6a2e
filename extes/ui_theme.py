"""The Gradio theme for our pages: the default look with system fonts only.

Gradio's default theme loads its fonts from Google Fonts in the participant's browser. That is a network
request at run time (it fails on offline machines, and letters then render in a mix of fonts) and it
would tell a third party the participant's IP address. System fonts avoid both.
"""

from __future__ import annotations

SANS = ("ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif")
PRIMARY, PRIMARY_HOVER = "#c2410c", "#9a3412"
MONO = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")


def offline_theme():
    import gradio as gr

    # Gradio's orange primary button (#f97316) has 2.8:1 contrast with its white text; WCAG AA asks 4.5:1.
    # Orange-700 (#c2410c) keeps the look at 5.2:1 (hover: orange-800).
    return gr.themes.Default(font=list(SANS), font_mono=list(MONO)).set(
        button_primary_background_fill=PRIMARY, button_primary_background_fill_dark=PRIMARY,
        button_primary_background_fill_hover=PRIMARY_HOVER, button_primary_background_fill_hover_dark=PRIMARY_HOVER,
        button_primary_text_color="#ffffff", button_primary_text_color_dark="#ffffff")
