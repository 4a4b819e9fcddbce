from django.urls import path

from reports import views

app_name = "reports"
urlpatterns = [
    path("rebuild/", views.start, name="start"),
    path("rebuild/<str:task_id>/", views.progress, name="progress"),
]
