"""The runtime: backends behind one interface, the Detector API, sources, pipeline and sinks.

Nothing here imports torch: a device needs only numpy, OpenCV and its inference library.
"""
