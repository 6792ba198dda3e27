"""Management API routes for endpoints."""

from rest_framework.routers import SimpleRouter

from endpoints.api.views import EndpointViewSet

router = SimpleRouter()
router.register("endpoints", EndpointViewSet, basename="endpoint")

urlpatterns = router.urls
