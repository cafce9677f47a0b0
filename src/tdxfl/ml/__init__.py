"""Machine-learning adapters: data sets, models, and the Keras training adapter."""
