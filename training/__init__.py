"""Training: data sets, fastai training, evaluation, and saving into the BentoML model store.

Imports the core (`soundclassifier`), never the service.
"""
