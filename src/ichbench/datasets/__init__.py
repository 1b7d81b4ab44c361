"""What each dataset ships and how its labels read: CQ500's CTFSH and reads files, BHX boxes (and their transfer between series), generic label tables.

A new dataset adapter goes here: where its images and labels lie, how scans and patients are named, its quirks.

May import: errors, inputs.
"""
