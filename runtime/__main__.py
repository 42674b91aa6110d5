"""`python -m recblr.runtime --onnx cell.onnx ...` == `recblr-serve ...`."""

from recblr.runtime.cli import serve_main

serve_main()
