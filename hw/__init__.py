"""Everything that touches hardware: cameras, inference runtimes, board information.

Hardware libraries (picamera2, gi, ai_edge_litert, tflite_runtime, serial) are imported only inside
the implementation that needs them, so this package imports on any machine.
"""
