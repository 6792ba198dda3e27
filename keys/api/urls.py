"""Management API routes for consumer keys."""

from rest_framework.routers import SimpleRouter

from keys.api.views import KeyViewSet

router = SimpleRouter()
router.register("keys", KeyViewSet, basename="key")

urlpatterns = router.urls
