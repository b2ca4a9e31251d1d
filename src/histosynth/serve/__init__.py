"""`histosynth serve`: a local web app to generate images from a run and inspect them beside real tiles."""
