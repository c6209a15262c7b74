"""One thin module per DVC stage: read the stage's params, call the library."""
