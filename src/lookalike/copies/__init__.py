"""copies"""
