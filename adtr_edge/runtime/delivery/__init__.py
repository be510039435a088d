"""Event delivery that loses nothing: MQTT and webhook sinks behind a bounded on-disk spool.

``factory.delivery_sinks`` builds them from the ``stream`` options; ``base.SpoolingSink`` is the
shared machinery (spool first, deliver from the spool on the sink's own threads); ``spool.Spool``
is the SQLite queue. paho-mqtt (the ``factory`` extra) is imported only by the MQTT sink.
"""
