"""The management API's permission check: Django's model permissions, as the admin applies them.

Its own module, because DRF imports DEFAULT_PERMISSION_CLASSES while its
views load: a module that imports DRF's views (as api.py does) would be a
circular import.
"""

from rest_framework import permissions


class ModelPermissions(permissions.DjangoModelPermissions):
    """Django's model permissions, as the admin applies them, for every management resource.

    GET, HEAD and OPTIONS need `view_<model>`, POST `add_`, PUT and PATCH
    `change_`, DELETE `delete_`, on the model of the view's queryset. An
    extra action that is not a create (a key's rotation, a user's credit)
    names the permission it needs: `@action(..., model_permission="change")`.
    Object-level privilege rules (who may change a superuser) are the
    resource's own, on top of this.
    """

    perms_map = {
        **permissions.DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return False
        if getattr(view, "_ignore_model_permissions", False):  # DRF's API root view
            return True
        opts = self._queryset(view).model._meta
        action = getattr(view, "model_permission", None)
        if action is None:
            perms = self.get_required_permissions(request.method, opts.model)
        else:
            perms = [f"{opts.app_label}.{action}_{opts.model_name}"]
        return request.user.has_perms(perms)
