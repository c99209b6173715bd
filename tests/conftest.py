# A conftest at the tests root puts tests/ on sys.path, so test modules can share helpers such as graph_data.
