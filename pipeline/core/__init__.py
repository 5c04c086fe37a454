"""The base layer every stage stands on: config models, column schemas, run-directory I/O, errors, names.

It imports nothing else of the project.
"""
