"""Management API routes for request logs, the audit log and usage statistics."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from logs.api.views import AuditViewSet, LogViewSet, StatsView

router = SimpleRouter()
router.register("logs", LogViewSet, basename="log")
router.register("audit", AuditViewSet, basename="audit")

urlpatterns = [
    *router.urls,
    path("stats/", StatsView.as_view(), name="stats"),
]
