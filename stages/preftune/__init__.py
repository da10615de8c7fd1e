"""The shared library behind the pipeline's stage scripts. Modules never import a stage."""
