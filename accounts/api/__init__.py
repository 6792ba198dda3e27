"""The management API for users; its shared base (auth, serializers, viewsets) lives here too."""
