"""Command-line front-ends: clipseg-predict and clipseg-export."""
