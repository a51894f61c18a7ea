"""Models: the shared encoder (`encoder.py`), the heads (`heads.py`) and the token mixers."""
