"""Edge inference server: LiteRT (CPU or Edge TPU) and ONNX models over HTTP.

Run with ``python -m model_server``; build the WSGI app with
:func:`model_server.app.create_app`. Importing this package does no work.
"""
