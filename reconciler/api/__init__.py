"""The platform boundary: tokens, the HTTP clients of Dataverse and the connections API, and the live
reader. The only layer that speaks HTTP.
"""
