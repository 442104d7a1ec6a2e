"""Our pages use system fonts only: no font files fetched by the participant's browser."""

from extes.ui_theme import offline_theme


def test_theme_fonts_are_system_fonts():
    theme = offline_theme()
    fonts = list(theme._font) + list(theme._font_mono)
    assert fonts and all(isinstance(f, str) for f in fonts)  # LocalFont/GoogleFont objects load files
    css = theme._get_theme_css()
    assert "@font-face" not in css and "googleapis" not in css
