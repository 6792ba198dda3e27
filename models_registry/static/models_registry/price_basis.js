// The model form's price labels follow the billing unit as it is chosen, so that a
// price is never typed per 1M tokens while the form reads it per request. The words
// per unit come from the select's data-price-basis (models_registry.admin.ModelForm).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var unit = document.getElementById("id_billing_unit");
  if (!unit || !unit.dataset.priceBasis) {
    return;
  }
  var words = JSON.parse(unit.dataset.priceBasis);
  unit.addEventListener("change", function () {
    ["id_price_in", "id_price_out", "id_price_cache_read", "id_price_cache_write"].forEach(function (id) {
      var label = document.querySelector("label[for=" + id + "]");
      if (label && words[unit.value]) {
        label.textContent = label.textContent.replace(/\(per [^)]*\)/, "(per " + words[unit.value] + ")");
      }
    });
  });
});
