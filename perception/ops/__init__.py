"""Building blocks shared by task types and models: layers, the dense FPN branch, box coding, letterbox geometry."""
