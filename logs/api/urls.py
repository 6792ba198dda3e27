"""Management API routes for request logs and usage statistics."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from logs.api.views import LogViewSet, StatsView

router = SimpleRouter()
router.register("logs", LogViewSet, basename="log")

urlpatterns = [
    *router.urls,
    path("stats/", StatsView.as_view(), name="stats"),
]
