"""Front-door adapters of the service (HTTP upload guard, gRPC server, web page).

Each is a thin layer over `soundclassifier.classifier.Classifier` and the service's batcher;
none decodes audio, computes features or post-processes predictions itself.
"""
