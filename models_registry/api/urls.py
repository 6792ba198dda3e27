"""Management API routes for the model catalog."""

from rest_framework.routers import SimpleRouter

from models_registry.api.views import ModelViewSet

router = SimpleRouter()
router.register("models", ModelViewSet, basename="model")

urlpatterns = router.urls
