"""Running the model: batch plans, the Predictor, transfers, the text cache."""
