"""The DICOM objects a radiologist opens: one module per IOD, built with highdicom.

Inputs are headers only (no pixel data of the sources is read), the crops and the predictions,
so the deliver stage can run on a host that cannot see the spool. ``build.build_results``
assembles a unit's ResultSet; ``summary`` reads an SR back.
"""
