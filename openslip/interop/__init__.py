"""Interoperability with the CLIP ecosystem: OpenAI / open_clip weights in; timm, ONNX, open_clip, transformers'
`CLIPModel` and openslip folders out; a model together with its preprocessing (`create_model_and_transforms`)."""
