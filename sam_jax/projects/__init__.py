"""Research projects built on sam-jax. The core library never imports from here."""
