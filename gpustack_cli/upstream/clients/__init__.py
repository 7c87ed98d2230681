"""HTTP clients to upstream servers, behind one narrow interface (`base.HttpClient`): the
hand-written relay client (`raw`) and aiohttp's session (`session`)."""
